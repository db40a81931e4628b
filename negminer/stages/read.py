"""Read stage: validate the pairs and corpus into the run's Parquet tables."""

from __future__ import annotations

import time
from pathlib import Path

from negminer.config import InputConfig
from negminer.mining.allocator import releases_memory
from negminer.stages.refs import Inputs, ReadRef
from negminer.stages.workdir import fingerprint_input, finish, finished
from negminer.storage.atomic import write_parquet_atomic

TABLES = ("anchors", "docs", "pairs", "rejects")


@releases_memory
def read_stage(pairs: str | Path, corpus: str | Path | None, work_dir: str | Path, *, config: InputConfig) -> ReadRef:
    """Validate inputs into ``anchors``/``docs``/``pairs``/``rejects.parquet`` in `work_dir`.

    Example:
        >>> ref = read_stage("pairs.parquet", "corpus.parquet", "work", config=InputConfig())  # doctest: +SKIP
        >>> ref.anchors, ref.docs  # doctest: +SKIP
        (200, 800)
    """
    from negminer.storage.inputs import prepare_inputs

    work_dir = Path(work_dir)
    if ref := finished(work_dir / "read.json", ReadRef):
        return ref
    start = time.perf_counter()
    prepared = prepare_inputs(pairs, corpus, config=config)
    for stem in TABLES:
        write_parquet_atomic(work_dir / f"{stem}.parquet", getattr(prepared, stem))
    ref = ReadRef(
        work_dir=str(work_dir),
        inputs=Inputs(pairs=fingerprint_input(pairs), corpus=fingerprint_input(corpus)),
        counts={
            **prepared.counts,
            "anchors": prepared.anchors.num_rows,
            "docs": prepared.docs.num_rows,
            "pairs": prepared.pairs.num_rows,
        },
        seconds=round(time.perf_counter() - start, 3),
    )
    return finish(work_dir / "read.json", ref)
