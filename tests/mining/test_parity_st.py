"""Parity with sentence-transformers' ``mine_hard_negatives`` on a real SciFact subset.

Both tools get the same pairs, the same corpus and the same vectors: negminer embeds through
its store, and the test writes those vectors into sentence-transformers' ``cache_folder`` under
the file names it computes, so neither side embeds twice and only the selection logic is
compared. With ``top`` sampling and each of the naive / absolute_margin / relative_margin /
max_score settings, negminer must pick exactly the negatives sentence-transformers picks.

Translation of settings: sentence-transformers derives ``range_max`` (when not given) as
``num_negatives + max_positives``, or ``10·num_negatives + max_positives`` when a margin or
max_score is set, retrieves ``range_max + max_positives`` raw candidates and then counts its
window over the survivors of its filters. negminer counts raw ranks, so the equivalent is
``range_max = (that derived range_max) + max_positives`` raw ranks (see docs/strategies.md).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import MineConfig, PipelineConfig
from negminer.mining.streaming import derive_files
from negminer.textkeys import text_key

pytestmark = pytest.mark.slow

NUM_PAIRS, NUM_DOCS, NUM_NEGATIVES, SEARCH_DEPTH = 40, 200, 3, 60
SETTINGS = {
    "naive": {},
    "absolute_margin": {"absolute_margin": 0.05},
    "relative_margin": {"relative_margin": 0.05},
    "max_score": {"max_score": 0.45},
}
# negminer's drop reason for each setting
REASON = {"absolute_margin": "absolute_margin", "relative_margin": "relative_margin", "max_score": "above_max_score"}


def st_raw_depth(num_negatives: int, max_positives: int, *, filtered: bool) -> int:
    """Raw candidates sentence-transformers looks at when range_max is not given."""
    range_max = (10 * num_negatives if filtered else num_negatives) + max_positives
    return range_max + max_positives


@pytest.fixture(scope="module")
def subset(sample_dir: Path, tmp_path_factory) -> tuple[pa.Table, pa.Table, Path]:
    """The first 40 sample pairs and 200 docs (their positives included), written as Parquet."""
    folder = tmp_path_factory.mktemp("parity")
    pairs = pq.read_table(sample_dir / "pairs.parquet").slice(0, NUM_PAIRS)
    corpus = pq.read_table(sample_dir / "corpus.parquet")
    wanted = set(pairs.column("positive_id").to_pylist())
    keep = pc.is_in(corpus.column("id"), value_set=pa.array(sorted(wanted)))
    others = corpus.filter(pc.invert(keep)).slice(0, NUM_DOCS - len(wanted))
    corpus = pa.concat_tables([corpus.filter(keep), others])
    texts = corpus.column("text").to_pylist()
    # exact-text and normalised-text duplicates would be deduplicated differently by the tools
    assert len({text_key(t) for t in texts}) == len(texts) == NUM_DOCS
    pq.write_table(pairs, folder / "pairs.parquet")
    pq.write_table(corpus, folder / "corpus.parquet")
    return pairs, corpus, folder


@pytest.fixture(scope="module")
def negminer_run(subset, store_root: Path) -> dict:
    """Read, embed and search once with negminer's stages (no selection yet)."""
    _, _, folder = subset
    config = PipelineConfig.from_dict({"mine": {"search_depth": SEARCH_DEPTH}})
    work = folder / "work"
    stages.read_stage(folder / "pairs.parquet", folder / "corpus.parquet", work, config=config.input)
    stages.embed_stage(work, config=config.embed, store_root=store_root)
    search = stages.search_stage(work, config=config.mine, index_config=config.index)
    return {
        "work": work,
        "candidates": Path(search.candidates),
        "anchors": pq.read_table(work / "anchors.parquet", columns=["anchor_id", "text"]),
        "docs": pq.read_table(work / "docs.parquet", columns=["doc_id", "text", "text_key"]),
        "pairs": pq.read_table(work / "pairs.parquet"),
        "anchor_vectors": np.load(work / "anchors.npy"),
        "doc_vectors": np.load(work / "docs.npy"),
    }


@pytest.fixture(scope="module")
def st_cache(subset, negminer_run, model, tmp_path_factory) -> Path:
    """sentence-transformers' cache_folder, filled with negminer's vectors under its own names."""
    pairs, corpus, _ = subset
    cache = tmp_path_factory.mktemp("st-cache")
    queries = list(dict.fromkeys(pairs.column("anchor").to_pylist()))
    st_corpus = list(dict.fromkeys(corpus.column("text").to_pylist() + pairs.column("positive").to_pylist()))
    model_name = model.model_card_data.base_model or ""
    by_text = {
        "query": _vectors_by_text(negminer_run["anchors"], negminer_run["anchor_vectors"]),
        "corpus": _vectors_by_text(negminer_run["docs"], negminer_run["doc_vectors"]),
    }
    for kind, texts in (("query", queries), ("corpus", st_corpus)):
        digest = hashlib.sha256(repr((model_name, None, None, texts)).encode()).hexdigest()
        np.save(cache / f"{kind}_embeddings_{digest}.npy", np.stack([by_text[kind][t] for t in texts]))
    return cache


def _vectors_by_text(table: pa.Table, vectors: np.ndarray) -> dict[str, np.ndarray]:
    return {text: vectors[i] for i, text in enumerate(table.column("text").to_pylist())}


def st_negatives(subset, model, cache: Path, options: dict) -> dict[str, list[str]]:
    """anchor text -> negatives in sentence-transformers' order (triplet output)."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    pairs, corpus, _ = subset
    dataset = Dataset.from_dict(
        {"anchor": pairs.column("anchor").to_pylist(), "positive": pairs.column("positive").to_pylist()}
    )
    before = sorted(p.name for p in cache.iterdir())
    mined = mine_hard_negatives(
        dataset,
        model,
        corpus=corpus.column("text").to_pylist(),
        num_negatives=NUM_NEGATIVES,
        sampling_strategy="top",
        use_faiss=True,
        cache_folder=str(cache),
        verbose=False,
        output_format="triplet",
        **options,
    )
    assert sorted(p.name for p in cache.iterdir()) == before, "sentence-transformers re-embedded"
    out: dict[str, list[str]] = {}
    first_positive: dict[str, str] = {}
    for row in mined:
        positive = first_positive.setdefault(row["anchor"], row["positive"])
        if row["positive"] == positive:
            out.setdefault(row["anchor"], []).append(row["negative"])
    return out


def negminer_negatives(run: dict, options: dict, range_max: int, out: Path) -> tuple[dict[str, list[str]], dict]:
    """anchor text -> negatives in slot order, and the drop counts."""
    config = MineConfig(
        strategy="naive", num_negatives=NUM_NEGATIVES, search_depth=SEARCH_DEPTH, range_max=range_max, **options
    )
    derived = derive_files(
        run["candidates"],
        {stem: out / f"{stem}.parquet" for stem in ("candidates", "triplets")},
        anchors=run["anchors"],
        docs=run["docs"],
        pairs=run["pairs"],
        config=config,
    )
    selected = pq.read_table(derived.paths["candidates"])
    chosen = selected.filter(pc.is_valid(selected.column("negative_slot")))
    anchor_text = run["anchors"].column("text").to_pylist()
    doc_text = run["docs"].column("text").to_pylist()
    rows = sorted(
        zip(
            chosen.column("anchor_idx").to_pylist(),
            chosen.column("negative_slot").to_pylist(),
            chosen.column("doc_idx").to_pylist(),
            strict=True,
        )
    )
    out: dict[str, list[str]] = {}
    for anchor, _, doc in rows:
        negatives = out.setdefault(anchor_text[anchor], [])
        if doc_text[doc] not in negatives:  # anchors sharing a text share their negatives
            negatives.append(doc_text[doc])
    return out, derived.counts["dropped_by_reason"]


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_top_sampling_picks_what_sentence_transformers_picks(setting, subset, negminer_run, st_cache, model, tmp_path):
    pairs, _, _ = subset
    options = SETTINGS[setting]
    max_positives = max(Counter(pairs.column("anchor").to_pylist()).values())
    raw_depth = st_raw_depth(NUM_NEGATIVES, max_positives, filtered=bool(options))
    ours, dropped = negminer_negatives(negminer_run, options, raw_depth, tmp_path)
    theirs = st_negatives(subset, model, st_cache, options)
    assert ours == theirs
    assert sum(len(v) for v in ours.values()) > 0
    if options:  # the setting really removed candidates, so the comparison means something
        assert dropped.get(REASON[setting], 0) > 0


def test_the_subset_has_anchors_with_several_positives(subset):
    pairs, _, _ = subset
    counts = Counter(pairs.column("anchor").to_pylist())
    assert max(counts.values()) >= 2
