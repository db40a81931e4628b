"""Bring your own embeddings: the pipeline's stages with user vectors and no model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import PipelineConfig
from negminer.errors import InputError
from negminer.mining.precomputed import load_vectors, vectors_for


def unit(rows: list[list[float]]) -> np.ndarray:
    array = np.asarray(rows, np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def write_inputs(tmp_path):
    pairs = pa.table(
        {
            "anchor_id": ["q1", "q2"],
            "anchor": ["first query", "second query"],
            "positive_id": ["d1", "d2"],
            "positive": ["doc one", "doc two"],
        }
    )
    corpus = pa.table({"id": ["d1", "d2", "d3", "d4"], "text": ["doc one", "doc two", "doc three", "doc four"]})
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    pq.write_table(corpus, tmp_path / "corpus.parquet")
    anchors = pa.table({"id": ["q2", "q1", "unused"], "embedding": [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]})
    pq.write_table(anchors, tmp_path / "anchors.parquet")
    np.savez(
        tmp_path / "docs.npz",
        ids=np.array(["d4", "d3", "d2", "d1"]),
        vectors=np.array([[0.8, 0.6], [0.6, 0.8], [0.0, 2.0], [3.0, 0.0]], np.float32),
    )


def test_parquet_and_npz_vectors_are_matched_by_id_and_normalised(tmp_path) -> None:
    write_inputs(tmp_path)
    got = vectors_for(["d1", "d2"], tmp_path / "docs.npz", what="doc")
    np.testing.assert_allclose(got, [[1, 0], [0, 1]])
    ids, vectors = load_vectors(tmp_path / "anchors.parquet")
    assert ids.to_pylist() == ["q2", "q1", "unused"] and vectors.shape == (3, 2)


def test_missing_id_names_the_file_and_the_id(tmp_path) -> None:
    write_inputs(tmp_path)
    with pytest.raises(InputError, match=r"docs\.npz.*1 doc id\(s\) have no vector, first 'd9'"):
        vectors_for(["d1", "d9"], tmp_path / "docs.npz", what="doc")


def test_ragged_embeddings_name_the_row(tmp_path) -> None:
    pq.write_table(pa.table({"id": ["a", "b"], "embedding": [[1.0, 0.0], [1.0]]}), tmp_path / "v.parquet")
    with pytest.raises(InputError, match="row 2, column 'embedding'"):
        load_vectors(tmp_path / "v.parquet")


@pytest.mark.parametrize("bad", [[np.nan, 1.0], [0.5, None], [np.inf, 1.0]])
def test_nan_null_or_infinite_values_name_the_file_and_the_id(tmp_path, bad) -> None:
    pq.write_table(pa.table({"id": ["a", "b"], "embedding": [[1.0, 0.0], bad]}), tmp_path / "v.parquet")
    with pytest.raises(InputError, match=r"v\.parquet.*1 doc vector\(s\) hold NaN, null or infinite values, first 'b'"):
        vectors_for(["a", "b"], tmp_path / "v.parquet", what="doc")


def test_stages_mine_with_precomputed_vectors(tmp_path) -> None:
    write_inputs(tmp_path)
    config = PipelineConfig.from_dict(
        {
            "embed": {"anchor_vectors": str(tmp_path / "anchors.parquet"), "doc_vectors": str(tmp_path / "docs.npz")},
            "mine": {"num_negatives": 1},
        }
    )
    work = stages.work_dir_for(
        tmp_path / "out",
        "byo",
        pairs=tmp_path / "pairs.parquet",
        corpus=tmp_path / "corpus.parquet",
        config=config,
        store=None,
    )
    stages.read_stage(tmp_path / "pairs.parquet", tmp_path / "corpus.parquet", work, config=config.input)
    ref = stages.embed_stage(work, config=config.embed, store_root=tmp_path / "store")
    assert ref.model.name == "precomputed" and ref.model.fingerprint.startswith("precomputed:")
    assert not (tmp_path / "store").exists()
    np.testing.assert_allclose(np.load(work / "anchors.npy"), [[1, 0], [0, 1]])
    # q1 = (1, 0): d1 is its positive, then d4 (0.8) beats d3 (0.6)
    docs = np.load(work / "docs.npy")
    scores = np.load(work / "anchors.npy") @ docs.T
    np.testing.assert_allclose(scores, [[1.0, 0.0, 0.6, 0.8], [0.0, 1.0, 0.8, 0.6]], atol=1e-6)
    search = stages.search_stage(work, config=config.mine, index_config=config.index)
    candidates = pq.read_table(search.candidates).to_pylist()
    top_non_positive = {
        row["anchor_idx"]: row["doc_idx"]
        for row in sorted(candidates, key=lambda r: -r["rank"])
        if not row["is_positive"]
    }
    assert top_non_positive == {0: 3, 1: 2}  # q1 -> d4, q2 -> d3


def test_vectors_given_alone_are_a_config_error() -> None:
    from negminer.errors import ConfigError

    with pytest.raises(ConfigError, match="anchor_vectors and doc_vectors"):
        PipelineConfig.from_dict({"embed": {"anchor_vectors": "a.parquet"}})
