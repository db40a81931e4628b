"""Curate stage: flag likely false negatives / false positives / near-duplicates (confident learning)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from negminer.config import CurateConfig
from negminer.stages.refs import CurateRef, SearchRef


def curate_stage(work_dir: str | Path, search: SearchRef, *, config: CurateConfig) -> CurateRef:
    """Score every candidate pair and flag the suspicious ones; see docs/curation.md.

    Writes ``curated.parquet`` (the candidates with ``flagged_false_negative``, which selection
    drops so the next valid candidate replaces them), ``flagged.parquet`` and
    ``training-pairs.parquet`` (the pairs without those whose positive is dropped or
    quarantined). With curation disabled, the candidates and pairs pass through unchanged.
    """
    from negminer.curation import KINDS
    from negminer.curation.sharded import CurationPaths, curate_files

    work_dir = Path(work_dir)
    if not config.enabled:
        return CurateRef(candidates=search.candidates, pairs=str(work_dir / "pairs.parquet"))
    start = time.perf_counter()
    anchors = pq.read_table(work_dir / "anchors.parquet", columns=["anchor_id", "text"])
    docs = pq.read_table(work_dir / "docs.parquet", columns=["doc_id", "text"])
    paths = CurationPaths(*(work_dir / f"{stem}.parquet" for stem in ("curated", "flagged", "training-pairs")))
    summary = curate_files(
        search.candidates,
        paths,
        pairs=pq.read_table(work_dir / "pairs.parquet"),
        anchor_vectors=np.load(work_dir / "anchors.npy", mmap_mode="r"),
        doc_vectors=np.load(work_dir / "docs.npy", mmap_mode="r"),
        anchor_texts=anchors.column("text").combine_chunks(),
        doc_texts=docs.column("text").combine_chunks(),
        config=config,
        anchor_ids=anchors.column("anchor_id").to_pylist(),
        doc_ids=docs.column("doc_id").to_pylist(),
    )
    return CurateRef(
        candidates=str(paths.curated),
        pairs=str(paths.training_pairs),
        flagged=str(paths.flagged),
        counts={"flagged_by_kind": {kind: summary.counts[kind] for kind in KINDS}, "curation": summary.counts},
        noise=summary.noise,
        seconds=round(time.perf_counter() - start, 3),
    )
