"""The dense2 candidate source (mine.sources: [dense, dense2], mine.second_model): a second local
embedding model's nearest neighbours, fused with the first model's; every score stays the first's cosine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import PipelineConfig
from negminer.errors import ConfigError
from negminer.mining.encoder import model_fingerprint

DEPTH = 10


def _config(second_model: Path, **mine) -> PipelineConfig:
    return PipelineConfig.from_dict(
        {"embed": {"max_seq_length": 64}, "mine": {"search_depth": DEPTH, **mine, "second_model": str(second_model)}}
    )


@pytest.fixture(scope="module")
def searched(random_vector_run, second_model, tmp_path_factory):
    """(work folder, second source's ref, dense-only table, fused table, fused ref) over 40 sample pairs."""
    config = _config(second_model, sources=["dense", "dense2"])
    folder = tmp_path_factory.mktemp("dense2")
    work, _, _ = random_vector_run(folder, config, pairs=40)
    second = stages.second_dense_stage(work, config=config, store_root=folder / "store")
    dense_only = PipelineConfig.from_dict({"mine": {"search_depth": DEPTH}})
    dense = stages.search_stage(work, config=dense_only.mine, index_config=config.index)
    fused = stages.search_stage(work, config=config.mine, index_config=config.index, second=second)
    return work, second, pq.read_table(dense.candidates), pq.read_table(fused.candidates), fused


def _lists(table, column: str) -> dict[int, list]:
    out: dict[int, list] = {}
    rows = table.sort_by([("anchor_idx", "ascending"), ("rank", "ascending")])
    for anchor, value in zip(rows.column("anchor_idx").to_pylist(), rows.column(column).to_pylist(), strict=True):
        out.setdefault(anchor, []).append(value)
    return out


def test_each_source_proposes_its_own_model_s_neighbours(searched) -> None:
    work, second, dense, fused, _ = searched
    sources = set(fused.column("source").to_pylist())
    assert sources <= {"dense", "dense2", "dense+dense2"} and "dense2" in sources, "the second model adds documents"
    anchors2 = np.load(Path(second.work_dir) / "anchors.npy")
    docs2 = np.load(Path(second.work_dir) / "docs.npy")
    assert anchors2.shape[0] == pq.read_metadata(work / "anchors.parquet").num_rows
    first_model_docs = _lists(dense, "doc_idx")
    depth = max(len(v) for v in first_model_docs.values())
    fused_sources = _lists(fused, "source")
    for anchor, docs in _lists(fused, "doc_idx").items():
        names = fused_sources[anchor]
        nearest2 = set(np.argsort(-(docs2 @ anchors2[anchor]), kind="stable")[:depth].tolist())
        for doc, name in zip(docs, names, strict=True):
            assert ("dense" in name.split("+")) == (doc in first_model_docs[anchor])
            assert ("dense2" in name.split("+")) <= (doc in nearest2), (anchor, doc, name)


def test_every_candidate_scores_the_first_model_s_cosine(searched) -> None:
    work, _, _, fused, _ = searched
    anchors, docs = np.load(work / "anchors.npy"), np.load(work / "docs.npy")
    rows = zip(fused.column("anchor_idx").to_pylist(), fused.column("doc_idx").to_pylist(), strict=True)
    expected = np.array([anchors[a] @ docs[d] for a, d in rows], np.float32)
    assert np.allclose(fused.column("score").to_numpy(), expected, atol=1e-5)


def test_the_reference_names_the_second_model_and_counts_rows_by_source(searched, second_model) -> None:
    _, second, _, fused, ref = searched
    assert ref.sources["dense2"]["model"]["fingerprint"] == model_fingerprint(second_model)
    assert ref.sources["dense2"]["index"]["rows"] == pq.read_metadata(Path(second.work_dir) / "docs.parquet").num_rows
    counts = {c["values"]: c["counts"] for c in pc.value_counts(fused.column("source")).to_pylist()}
    assert ref.sources["rows_by_source"] == counts


def test_a_search_naming_dense2_needs_the_second_source(searched, second_model) -> None:
    work = searched[0]
    config = _config(second_model, sources=["dense", "dense2"])
    with pytest.raises(ValueError, match="second_dense_stage"):
        stages.search_stage(work, config=config.mine, index_config=config.index)
    with pytest.raises(ConfigError, match="dense2 source and second_model go together"):
        PipelineConfig.from_dict({"mine": {"sources": ["dense", "dense2"]}})
    with pytest.raises(ConfigError, match="dense2 source and second_model go together"):
        PipelineConfig.from_dict({"mine": {"second_model": str(second_model)}})


def test_another_second_model_gets_its_own_folder_and_candidates(searched, second_model, tmp_path) -> None:
    import shutil

    work, second, _, _, ref = searched
    other = tmp_path / "retrained"
    shutil.copytree(second_model, other)
    with (other / "config.json").open("a") as handle:
        handle.write("\n")
    config = _config(other, sources=["dense", "dense2"])
    store = work.parent / "store"  # the searched fixture's
    assert stages.second_work_dir(work, config) != Path(second.work_dir)
    again = stages.second_work_dir(work, _config(second_model, sources=["dense", "dense2"]))
    assert again == Path(second.work_dir)
    assert json.loads((again / "embed.json").read_text())["model"]["fingerprint"] == model_fingerprint(second_model)
    other_second = stages.second_dense_stage(work, config=config, store_root=store)
    other_ref = stages.search_stage(work, config=config.mine, index_config=config.index, second=other_second)
    assert other_ref.candidates != ref.candidates


def test_bm25_dense2_and_selection_share_one_doc_keys_file(searched, second_model) -> None:
    from negminer.mining.bm25 import id_hashes
    from negminer.mining.strategies import stable_hash64
    from negminer.stages.workdir import DOC_KEYS

    work, second, _, _, _ = searched
    config = _config(second_model, sources=["dense", "bm25", "dense2"])
    bm25 = stages.bm25_stage(work, config=config.mine)
    doc_ids = pq.read_table(work / "docs.parquet", columns=["doc_id"]).column("doc_id").to_pylist()
    assert Path(bm25.doc_keys) == work / DOC_KEYS
    assert not (Path(second.work_dir) / DOC_KEYS).exists(), "the second model's folder keeps no copy"
    assert np.array_equal(np.load(work / DOC_KEYS), stable_hash64(doc_ids))
    assert np.array_equal(id_hashes(work / "docs.parquet", "doc_id"), stable_hash64(doc_ids))
    assert not list(work.glob("bm25-*.doc-keys.npy")) and not (work / "select-doc_hash.npy").exists()
