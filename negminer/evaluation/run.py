"""``negminer.evaluate``: measure a model on a labelled retrieval set, before and after
fine-tuning it on a dataset version's training view (and on a second version beside it).

Every arm starts from a fresh copy of the same model, trains with the same budget and seed
(:mod:`negminer.evaluation.train`) and is measured by the same InformationRetrievalEvaluator,
so the figures differ only by the training rows.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from negminer import __version__
from negminer.api import DatasetVersion, open_version
from negminer.config import EvaluateConfig
from negminer.errors import ConfigError
from negminer.evaluation import records
from negminer.evaluation.data import RetrievalSet, load_retrieval_set

logger = logging.getLogger(__name__)

ArmName = Literal["base", "train", "against"]
VersionLike = str | Path | DatasetVersion


@dataclass(frozen=True)
class ArmResult:
    """One model's figures: the base model, or a copy fine-tuned on a version.

    Attributes:
        arm: ``base``, ``train`` or ``against``.
        metrics: ``ndcg@10``, ``recall@100``, ``mrr@10``, and ``alignment`` and ``uniformity``
            (Wang & Isola, :mod:`negminer.evaluation.diagnostics`) unless ``diagnostics.enabled``
            is off.
        version: the version folder trained on (None for the base model).
        rows: training rows of that version's triplets.parquet (0 for the base model).
        rows_sha256: fingerprint of those rows.
        train_seconds, eval_seconds: wall time of training and of the evaluation.
    """

    arm: ArmName
    metrics: dict[str, float]
    version: str | None = None
    rows: int = 0
    rows_sha256: str | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    delta: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"arm": self.arm, "version": self.version, **self.metrics}
        if self.version is not None:
            out.update(rows=self.rows, rows_sha256=self.rows_sha256, delta=self.delta)
            out["train_seconds"] = round(self.train_seconds, 1)
        out["eval_seconds"] = round(self.eval_seconds, 1)
        return out


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measured, and where it wrote it.

    Attributes:
        arms: the base model first, then the trained copies (``train``, ``against``).
        record: the JSON-able record (also in `path` and in each version's evaluations folder).
        path: the JSON file written (None when no `output` was given).
        stored: the copies kept beside each trained version (``ROOT/NAME/evaluations/VERSION/``).
    """

    arms: tuple[ArmResult, ...]
    record: dict[str, Any]
    path: Path | None = None
    stored: tuple[Path, ...] = ()

    def arm(self, name: ArmName) -> ArmResult | None:
        """The result of arm `name`, or None when it did not run."""
        return next((a for a in self.arms if a.arm == name), None)

    @property
    def base(self) -> ArmResult:
        return self.arms[0]

    @property
    def trained(self) -> ArmResult | None:
        return self.arm("train")

    @property
    def against(self) -> ArmResult | None:
        return self.arm("against")


def evaluate(
    retrieval_set: str | Path | RetrievalSet,
    *,
    train: VersionLike | None = None,
    against: VersionLike | None = None,
    output: str | Path | None = None,
    config: EvaluateConfig | None = None,
    **options: Any,
) -> Evaluation:
    """nDCG@10, recall@100 and MRR@10 of a model, and of copies fine-tuned on dataset versions.

    Args:
        retrieval_set: a folder in the BEIR or ``../shared/data`` layout (corpus, queries,
            qrels; :mod:`negminer.evaluation.data`), or a :class:`RetrievalSet`.
        train: a dataset version (folder, ``ROOT/NAME`` for its LATEST, or a
            :class:`DatasetVersion`): fine-tune a copy of the model on its triplets.parquet
            with MultipleNegativesRankingLoss and measure it beside the base model.
        against: a second version, trained on with the same budget and seed, measured beside.
        output: write the results JSON here.
        config: an :class:`EvaluateConfig`; `options` go on top.
        **options: :class:`EvaluateConfig` settings (``model``, ``split``, ``steps``,
            ``batch_size``, ``learning_rate``, ``seed``, ``max_seq_length``, ...).

    Returns:
        An :class:`Evaluation`; its record is also stored beside every trained version
        (``ROOT/NAME/evaluations/VERSION/``), where the version's run report finds it.

    Example:
        >>> result = negminer.evaluate("examples/scifact-sample", train="datasets/scifact-sample",
        ...                            steps=20, output="evaluation.json")  # doctest: +SKIP
        >>> result.base.metrics["ndcg@10"], result.trained.metrics["ndcg@10"]  # doctest: +SKIP
    """
    settings = _settings(config, options)
    versions = {"train": _version(train, "train"), "against": _version(against, "against")}
    if versions["against"] is not None and versions["train"] is None:
        raise ConfigError("against needs train: it is measured beside the version given to train")
    data = _data(retrieval_set, settings)
    rows = {arm: _training_rows(v, settings) for arm, v in versions.items() if v is not None}
    logger.info("evaluating on %d queries and %d documents", len(data.queries), len(data.corpus))

    from negminer.evaluation.train import evaluator_for, fresh_model, score

    evaluator = evaluator_for(data, batch_size=settings.eval_batch_size)
    start = time.perf_counter()
    base_model = fresh_model(settings.model, device=settings.device, max_seq_length=settings.max_seq_length)
    base_metrics = {**score(base_model, evaluator), **_geometry(base_model, data, settings)}
    base = ArmResult("base", base_metrics, eval_seconds=time.perf_counter() - start)
    del base_model
    logger.info("base model: %s", base.metrics)
    arms = [base]
    for arm, table in rows.items():
        arms.append(
            _trained_arm(arm, versions[arm], table, settings=settings, evaluator=evaluator, data=data, base=base)
        )
    record = _record(data, settings, arms)
    path = None if output is None else records.write_record(output, record)
    stored = tuple(records.store_for_versions(record))
    return Evaluation(tuple(arms), record, path, stored)


def _settings(config: EvaluateConfig | None, options: dict[str, Any]) -> EvaluateConfig:
    unknown = sorted(set(options) - set(EvaluateConfig.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; evaluate() takes {', '.join(EvaluateConfig.model_fields)}"
        )
    base = (config or EvaluateConfig()).model_dump()
    try:
        return EvaluateConfig.model_validate({**base, **options})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"evaluate: {problems}") from err


def _version(version: VersionLike | None, role: str) -> DatasetVersion | None:
    if version is None or isinstance(version, DatasetVersion):
        return version
    try:
        return open_version(version)
    except ConfigError as err:
        raise ConfigError(f"{role}: {err} (give a version folder ROOT/NAME/vNNNN or a dataset folder)") from err


def _data(retrieval_set: str | Path | RetrievalSet, settings: EvaluateConfig) -> RetrievalSet:
    if isinstance(retrieval_set, RetrievalSet):
        return retrieval_set
    return load_retrieval_set(
        retrieval_set,
        split=settings.split,
        titles=settings.titles,
        max_queries=settings.max_queries,
        max_corpus=settings.max_corpus,
    )


def _training_rows(version: DatasetVersion, settings: EvaluateConfig) -> pa.Table:
    """The version's training view, checked before any model is loaded."""
    from negminer.errors import InputError

    path = version.path / "triplets.parquet"
    if not path.exists():
        raise InputError("the version has no training view (triplets.parquet)", path=str(path))
    table = pq.read_table(path)
    if table.num_rows < settings.batch_size:
        raise InputError(
            f"{table.num_rows} training rows, fewer than the batch size {settings.batch_size}; "
            "lower batch_size (--batch-size)",
            path=str(path),
        )
    return table


def _trained_arm(
    arm: ArmName,
    version: DatasetVersion,
    rows: pa.Table,
    *,
    settings: EvaluateConfig,
    evaluator: Any,
    data: RetrievalSet,
    base: ArmResult,
) -> ArmResult:
    from negminer.evaluation.train import score, train_model

    logger.info("%s: fine-tuning on %d rows of %s", arm, rows.num_rows, version.path)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="negminer-train-") as scratch:
        model = train_model(
            rows,
            model=settings.model,
            steps=settings.steps,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            warmup_ratio=settings.warmup_ratio,
            max_seq_length=settings.max_seq_length,
            seed=settings.seed,
            device=settings.device,
            output_dir=scratch,
            precision=settings.precision,
        )
    trained = time.perf_counter()
    metrics = {**score(model, evaluator), **_geometry(model, data, settings)}
    logger.info("%s: %s", arm, metrics)
    return ArmResult(
        arm,
        metrics,
        version=str(version.path.resolve()),
        rows=rows.num_rows,
        rows_sha256=table_fingerprint(rows),
        train_seconds=trained - start,
        eval_seconds=time.perf_counter() - trained,
        delta={m: _delta(v, base.metrics.get(m)) for m, v in metrics.items()},
    )


def _geometry(model: Any, data: RetrievalSet, settings: EvaluateConfig) -> dict[str, float | None]:
    """Alignment and uniformity of `model` on `data` (empty when ``diagnostics.enabled`` is off)."""
    if not settings.diagnostics.enabled:
        return {}
    from negminer.evaluation.diagnostics import model_geometry

    return model_geometry(model, data, config=settings.diagnostics, batch_size=settings.eval_batch_size)


def table_fingerprint(table: pa.Table) -> str:
    """sha256 over a table's column names and string cells, row by row (bench/downstream.py's key)."""
    digest = hashlib.sha256("\x1f".join(table.column_names).encode())
    for row in zip(*(table[c].to_pylist() for c in table.column_names), strict=True):
        digest.update("\x1f".join(row).encode() + b"\x1e")
    return digest.hexdigest()


def _delta(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else round(value - base, 6)


def _record(data: RetrievalSet, settings: EvaluateConfig, arms: list[ArmResult]) -> dict[str, Any]:
    return {
        "negminer_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "retrieval_set": data.describe(),
        "model": settings.model or "all-MiniLM-L6-v2 (packaged)",
        "config": settings.model_dump(),
        "arms": [a.to_dict() for a in arms],
        "environment": records.environment(),
    }
