"""Fine-tune and measure: MultipleNegativesRankingLoss for a fixed budget, then
InformationRetrievalEvaluator's nDCG@10, recall@100 and MRR@10.

Free functions over a model and a pyarrow table of training rows; the budget is plain keyword
arguments (their defaults live in :class:`negminer.config.EvaluateConfig`). The same rows,
budget and seed give the same model: the seed fixes the initialisation of everything random
(``transformers.set_seed``) and the batch order (``data_seed``), and batches never hold the
same text twice (``BatchSamplers.NO_DUPLICATES``), so in-batch negatives are never positives.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from negminer.errors import ConfigError, InputError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from negminer.evaluation.data import RetrievalSet

logger = logging.getLogger(__name__)

METRICS = {"ndcg@10": "cosine_ndcg@10", "recall@100": "cosine_recall@100", "mrr@10": "cosine_mrr@10"}
_TRAIN_PACKAGES = "fine-tuning needs the datasets and accelerate packages: pip install 'negminer[train]'"


def fresh_model(model: str | None, *, device: str | None, max_seq_length: int | None) -> SentenceTransformer:
    """A new copy of `model` (a local folder; None: the packaged all-MiniLM-L6-v2) read from disk."""
    from negminer.mining.encoder import load_model

    return load_model(model, device=device, max_seq_length=max_seq_length)


def build_evaluator(
    queries: dict[str, str], corpus: dict[str, str], relevant: dict[str, set[str]], *, batch_size: int
) -> InformationRetrievalEvaluator:
    """InformationRetrievalEvaluator reporting nDCG@10, MRR@10 and recall@100 (cosine).

    Example:
        >>> evaluator = build_evaluator({"q": "aspirin"}, {"d": "Aspirin lowers risk."}, {"q": {"d"}},
        ...                             batch_size=32)  # doctest: +SKIP
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries,
        corpus,
        relevant,
        ndcg_at_k=[10],
        mrr_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[100],
        map_at_k=[100],
        batch_size=batch_size,
        show_progress_bar=False,
        write_csv=False,
    )


def evaluator_for(data: RetrievalSet, *, batch_size: int) -> InformationRetrievalEvaluator:
    """:func:`build_evaluator` over a :class:`~negminer.evaluation.data.RetrievalSet`."""
    return build_evaluator(data.queries, data.corpus, data.relevant, batch_size=batch_size)


def score(model: SentenceTransformer, evaluator: InformationRetrievalEvaluator) -> dict[str, float]:
    """nDCG@10, recall@100 and MRR@10 of `model` (cosine scores), rounded to 5 decimals.

    Example:
        >>> score(model, evaluator)  # doctest: +SKIP
        {'ndcg@10': 0.64508, 'recall@100': 0.925, 'mrr@10': 0.60463}
    """
    metrics = evaluator(model)
    return {name: round(float(metrics[key]), 5) for name, key in METRICS.items()}


def train_model(
    rows: pa.Table,
    *,
    model: str | None,
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_ratio: float,
    max_seq_length: int | None,
    seed: int,
    device: str | None,
    output_dir: str | Path,
    precision: str,
) -> SentenceTransformer:
    """Fine-tune a fresh copy of `model` on `rows` with MultipleNegativesRankingLoss for `steps`.

    Args:
        rows: string columns, the first the anchor, the second the positive, any further ones
            negatives (a version's triplets.parquet as it is; ``(anchor, positive)`` pairs train
            on in-batch negatives only). At least `batch_size` rows.
        model: a local sentence-transformers folder; None: the packaged all-MiniLM-L6-v2.
        steps: optimizer steps (batches of `batch_size` rows; the last partial batch of an
            epoch is dropped, and the rows are cycled until `steps` is reached).
        batch_size: rows per step.
        learning_rate: peak learning rate (linear warmup, then linear decay to 0).
        warmup_ratio: share of `steps` spent warming up.
        max_seq_length: token length; None keeps the model's own.
        seed: seeds the weights' random state and the batch order.
        device: torch device; None picks CUDA when present.
        output_dir: scratch folder of the trainer (nothing is saved there).
        precision: "float32", or "bfloat16" for mixed precision (the trainer's ``bf16``).

    Returns:
        The trained model (in memory).

    Example:
        >>> rows = pq.read_table("datasets/scifact-sample/v0001/triplets.parquet")  # doctest: +SKIP
        >>> trained = train_model(rows, model=None, steps=240, batch_size=16, learning_rate=5e-5,
        ...                       warmup_ratio=0.1, max_seq_length=128, seed=1, device="cpu",
        ...                       output_dir="/tmp/train", precision="float32")  # doctest: +SKIP
    """
    if rows.num_rows < batch_size:
        raise InputError(f"{rows.num_rows} training rows, fewer than the batch size {batch_size}; lower --batch-size")
    if rows.num_columns < 2 or any(not pa.types.is_string(t) for t in rows.schema.types):
        raise InputError(f"training rows need two or more string columns (anchor, positive, ...); got {rows.schema}")
    try:
        from datasets import Dataset
        from sentence_transformers import SentenceTransformerTrainer
    except ImportError as err:
        raise ConfigError(_TRAIN_PACKAGES) from err
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )
    from transformers import set_seed

    set_seed(seed)
    trained = fresh_model(model, device=device, max_seq_length=max_seq_length)
    try:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(output_dir),
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            warmup_steps=warmup_ratio,  # a float below 1 is a share of max_steps
            seed=seed,
            data_seed=seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            logging_steps=max(1, steps // 5),
            use_cpu=str(trained.device) == "cpu",
            dataloader_drop_last=True,
            bf16=precision == "bfloat16",
        )
    except ImportError as err:  # the trainer's arguments need accelerate
        raise ConfigError(_TRAIN_PACKAGES) from err
    with _quiet_datasets():
        dataset = Dataset.from_dict({column: rows[column].to_pylist() for column in rows.column_names})
        trainer = SentenceTransformerTrainer(
            model=trained, args=args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(trained)
        )
        _log_instead_of_print(trainer)
        trainer.train()
    return trained


def _log_instead_of_print(trainer: Any) -> None:
    """The trainer prints its logs on stdout (PrinterCallback): send them to the logger instead."""
    from transformers.trainer_callback import PrinterCallback, TrainerCallback

    class LogCallback(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
            if logs:
                shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items() if k != "total_flos"}
                logger.info("step %d/%d: %s", state.global_step, state.max_steps, shown)

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogCallback())


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No datasets progress bars on a CLI's stderr while the trainer prepares its rows."""
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()
