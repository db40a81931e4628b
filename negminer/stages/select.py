"""Select stage: the strategy picks each anchor's negatives; the training views are written.

Selection is :func:`negminer.mining.streaming.derive_files`, which ``refilter`` shares: the
candidate table is read in batches of whole anchors and the outputs are written as they are
made, so memory does not grow with the number of candidates. Reviewers' decisions from the
audit database are applied batch by batch (:mod:`negminer.curation.decisions`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.config import SelectionConfig
from negminer.mining.allocator import releases_memory
from negminer.stages.refs import CurateRef, SelectRef
from negminer.storage.atomic import naming_failures, write_parquet_atomic

logger = logging.getLogger(__name__)

VIEW_NAMES = {"candidates": "selected", "triplets": "triplets", "scored": "scored"}


@releases_memory
def select_stage(
    work_dir: str | Path, curated: CurateRef, *, config: SelectionConfig, batch_rows: int | None = None
) -> SelectRef:
    """Apply the strategy and build the views; writes selected/triplets[/scored]/pairs-scored.

    `curated` names the candidates and the training pairs (the curation stage's output, or the
    search's candidates and every validated pair when curation is off). Each pair's cosine
    (from the vectors) is added to the pairs table. `batch_rows` is the candidate rows read at
    once (default :data:`negminer.mining.streaming.BATCH_ROWS`).
    """
    from negminer.curation.decisions import BatchedFeedback
    from negminer.mining.derive import with_pair_scores
    from negminer.mining.streaming import BATCH_ROWS, derive_files

    work_dir = Path(work_dir)
    start = time.perf_counter()
    all_pairs = with_pair_scores(
        pq.read_table(work_dir / "pairs.parquet"),
        np.load(work_dir / "anchors.npy", mmap_mode="r"),
        np.load(work_dir / "docs.npy", mmap_mode="r"),
    )
    pairs, held_out = _split_training_pairs(all_pairs, curated)
    anchors = pq.read_table(work_dir / "anchors.parquet", columns=["anchor_id", "text"])
    docs = pq.read_table(work_dir / "docs.parquet", columns=["doc_id", "text", "text_key"])
    feedback = BatchedFeedback(
        _work_dir_decisions(work_dir),
        schema=pq.read_schema(curated.candidates),
        anchors=anchors,
        docs=docs,
        pairs=pairs,
        extra_positives=config.audit_extra_positives,
        held_out=held_out,
    )
    with naming_failures(work_dir):  # its staged writers' failed writes name no file
        derived = derive_files(
            curated.candidates,
            {stem: work_dir / f"{name}.parquet" for stem, name in VIEW_NAMES.items()},
            anchors=anchors,
            docs=docs,
            pairs=feedback.pairs,
            config=config,
            transform=feedback,
            batch_rows=batch_rows or BATCH_ROWS,
        )
    tables = {stem: str(path) for stem, path in derived.paths.items()}
    tables["pairs"] = str(write_parquet_atomic(work_dir / "pairs-scored.parquet", pairs))
    return SelectRef(
        selected=tables["candidates"],
        triplets=tables["triplets"],
        tables=tables,
        counts={**derived.counts, "audit": feedback.counts},
        selection=derived.selection,
        score_quantiles=derived.score_quantiles,
        seconds=round(time.perf_counter() - start, 3),
    )


def _split_training_pairs(all_pairs: pa.Table, curated: CurateRef) -> tuple[pa.Table, pa.Table]:
    """(training pairs, pairs curation held out of training), both from `all_pairs`."""
    training = pq.read_table(curated.pairs, columns=["pair_idx"]).column("pair_idx")
    in_training = pc.is_in(all_pairs.column("pair_idx"), value_set=training.combine_chunks())
    return all_pairs.filter(in_training), all_pairs.filter(pc.invert(in_training))


def _work_dir_decisions(work_dir: Path) -> pa.Table:
    """Reviewers' decisions for the dataset of a work folder ``ROOT/NAME/.work/KEY`` (none otherwise)."""
    from negminer.audit.feedback import load_decisions

    work_dir = work_dir.resolve()
    if work_dir.parent.name != ".work":
        logger.debug("%s is not ROOT/NAME/.work/KEY: no audit decisions applied", work_dir)
        return pa.table({c: pa.array([], pa.string()) for c in ("anchor_id", "doc_id", "decision")})
    return load_decisions(work_dir.parents[2], work_dir.parents[1].name)
