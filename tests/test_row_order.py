"""The same pairs and corpus in another row order give the same dataset (ids and content decide)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import negminer
from negminer.config import PipelineConfig

pytestmark = pytest.mark.slow

# Short sequences keep the forward pass quick; every stage, curation included, runs as by default.
CONFIG = PipelineConfig.from_dict({"embed": {"max_seq_length": 64}})


def _shuffled(path: Path, out: Path, seed: int) -> Path:
    table = pq.read_table(path)
    order = pa.array(np.random.default_rng(seed).permutation(table.num_rows))
    pq.write_table(table.take(order), out)
    return out


def _triplets(version: negminer.DatasetVersion) -> list[tuple[str, ...]]:
    table = pq.read_table(version.path / "triplets.parquet")
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def _flags(version: negminer.DatasetVersion) -> list[tuple[str, str, str, str]]:
    flagged = version.flagged
    columns = ("anchor_id", "doc_id", "kind", "action")
    return sorted(zip(*(flagged.column(c).to_pylist() for c in columns), strict=True))


def test_shuffled_pairs_and_corpus_give_the_same_triplets_and_flags(sample_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    pairs, corpus = sample_dir / "pairs.parquet", sample_dir / "corpus.parquet"
    original = negminer.mine(pairs, corpus=corpus, out=tmp_path / "a", config=CONFIG, store=store)
    shuffled = negminer.mine(
        _shuffled(pairs, tmp_path / "pairs.parquet", seed=1),
        corpus=_shuffled(corpus, tmp_path / "corpus.parquet", seed=2),
        out=tmp_path / "b",
        config=CONFIG,
        store=store,
    )
    assert original.counts["flagged_by_kind"]["false_negative"] > 0, "curation judged something"
    assert _flags(shuffled) == _flags(original)
    assert _triplets(shuffled) == _triplets(original)
    assert shuffled.manifest["diagnostics"] == original.manifest["diagnostics"], "sampled and summed by id"
