"""Bring your own embeddings: the pipeline's stages with user vectors and no model."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import PipelineConfig
from negminer.errors import InputError
from negminer.mining import precomputed
from negminer.mining.precomputed import write_vectors_for


def unit(rows: list[list[float]] | np.ndarray) -> np.ndarray:
    array = np.asarray(rows, np.float32)
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture
def small_batches(monkeypatch) -> None:
    """Batches of 2 rows: every file below spans several."""
    monkeypatch.setattr(precomputed, "BATCH_ROWS", 2)


def vectors_table(ids: list, rows: list) -> pa.Table:
    return pa.table({"id": ids, "embedding": rows})


IDS = ["a", "b", "c", "d", "e", "f", "g"]
ROWS = np.random.default_rng(3).normal(size=(7, 5)).astype(np.float32)


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


# --- formats ---------------------------------------------------------------------------------


def test_parquet_in_several_row_groups_is_streamed_in_id_order(tmp_path, small_batches) -> None:
    pq.write_table(vectors_table(IDS, list(ROWS)), tmp_path / "v.parquet", row_group_size=3)
    assert pq.ParquetFile(tmp_path / "v.parquet").metadata.num_row_groups == 3
    wanted = ["g", "a", "d", "c"]
    dim = write_vectors_for(wanted, tmp_path / "v.parquet", tmp_path / "out.npy", what="doc")
    assert dim == 5
    expected = unit(ROWS[[6, 0, 3, 2]])
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(expected)  # what np.save wrote before


def test_parquet_fixed_size_lists_float64_and_a_folder_of_files(tmp_path, small_batches) -> None:
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(ROWS.astype(np.float64).ravel()), 5)
    pq.write_table(pa.table({"id": IDS, "embedding": fixed}), tmp_path / "fixed.parquet", row_group_size=4)
    write_vectors_for(["f", "b"], tmp_path / "fixed.parquet", tmp_path / "out.npy", what="doc")
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(unit(ROWS[[5, 1]]))

    (tmp_path / "parts").mkdir()
    pq.write_table(vectors_table(IDS[:4], list(ROWS[:4])), tmp_path / "parts" / "part-0.parquet")
    pq.write_table(vectors_table(IDS[4:], list(ROWS[4:])), tmp_path / "parts" / "part-1.parquet")
    write_vectors_for(["f", "b"], tmp_path / "parts", tmp_path / "out.npy", what="doc")
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(unit(ROWS[[5, 1]]))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_plain_or_compressed(tmp_path, small_batches, save) -> None:
    save(tmp_path / "v.npz", ids=np.array(IDS), vectors=ROWS.astype(np.float64))
    write_vectors_for(["e", "a", "c"], tmp_path / "v.npz", tmp_path / "out.npy", what="anchor")
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(unit(ROWS[[4, 0, 2]]))


def test_npz_numeric_ids_and_fortran_order(tmp_path, small_batches) -> None:
    np.savez(tmp_path / "v.npz", ids=np.arange(10, 17), vectors=np.asfortranarray(ROWS))
    write_vectors_for(["16", "10"], tmp_path / "v.npz", tmp_path / "out.npy", what="doc")
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(unit(ROWS[[6, 0]]))


@pytest.mark.parametrize("ids_file", ["ids.npy", "ids.parquet"])
def test_npy_folder_with_its_ids(tmp_path, small_batches, ids_file) -> None:
    folder = tmp_path / "vectors"
    folder.mkdir()
    np.save(folder / "vectors.npy", ROWS.astype(np.float16))
    if ids_file == "ids.npy":
        np.save(folder / "ids.npy", np.array(IDS))
    else:
        pq.write_table(pa.table({"id": IDS}), folder / "ids.parquet", row_group_size=3)
    write_vectors_for(["b", "g", "d"], folder, tmp_path / "out.npy", what="doc")
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(unit(ROWS.astype(np.float16)[[1, 6, 3]]))


def test_empty_ids_give_an_empty_array_of_the_files_dimension(tmp_path) -> None:
    pq.write_table(vectors_table(IDS, list(ROWS)), tmp_path / "v.parquet")
    assert write_vectors_for([], tmp_path / "v.parquet", tmp_path / "out.npy", what="doc") == 5
    assert np.load(tmp_path / "out.npy").shape == (0, 5)


# --- duplicates ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["parquet", "npz"])
def test_an_id_repeated_in_the_file_takes_its_first_vector(tmp_path, small_batches, kind) -> None:
    # "b" at rows 2 and 3 (one batch), "a" at rows 1 and 6 (other batches); the later ones differ
    ids = ["a", "b", "b", "c", "d", "a"]
    rows = [[1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [3.0, 4.0], [0.0, 0.0], [7.0, 7.0]]
    path = tmp_path / f"v.{kind}"
    if kind == "parquet":
        pq.write_table(vectors_table(ids, rows), path, row_group_size=3)
    else:
        np.savez(path, ids=np.array(ids), vectors=np.array(rows, np.float32))
    write_vectors_for(["c", "a", "b"], path, tmp_path / "out.npy", what="doc")
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(unit([[3.0, 4.0], [1.0, 0.0], [0.0, 1.0]]))


def test_a_repeated_wanted_id_gets_its_vector_at_every_position(tmp_path, small_batches) -> None:
    pq.write_table(vectors_table(IDS, list(ROWS)), tmp_path / "v.parquet", row_group_size=3)
    write_vectors_for(["c", "a", "c", "g", "a"], tmp_path / "v.parquet", tmp_path / "out.npy", what="doc")
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(unit(ROWS[[2, 0, 2, 6, 0]]))


# --- errors ----------------------------------------------------------------------------------


def test_missing_ids_are_counted_and_the_first_in_id_order_named(tmp_path, small_batches) -> None:
    write_inputs(tmp_path)
    with pytest.raises(InputError, match=r"docs\.npz: 3 doc id\(s\) have no vector, first 'd9'$"):
        write_vectors_for(["d1", "d9", "d0", "d9"], tmp_path / "docs.npz", tmp_path / "out.npy", what="doc")


@pytest.mark.parametrize("bad", [[np.nan, 1.0], [0.5, None], [np.inf, 1.0]])
def test_nan_null_or_infinite_values_name_the_file_and_the_id(tmp_path, small_batches, bad) -> None:
    table = vectors_table(["z", "b", "a", "c"], [bad, [1.0, 0.0], bad, [0.0, 1.0]])
    pq.write_table(table, tmp_path / "v.parquet")
    with pytest.raises(
        InputError, match=r"v\.parquet: 2 doc vector\(s\) hold NaN, null or infinite values, first 'a'$"
    ):
        write_vectors_for(["b", "a", "c", "z"], tmp_path / "v.parquet", tmp_path / "out.npy", what="doc")


def test_missing_ids_are_reported_before_bad_values(tmp_path) -> None:
    pq.write_table(vectors_table(["a"], [[np.nan, 1.0]]), tmp_path / "v.parquet")
    with pytest.raises(InputError, match=r"1 anchor id\(s\) have no vector, first 'x'"):
        write_vectors_for(["a", "x"], tmp_path / "v.parquet", tmp_path / "out.npy", what="anchor")


def test_a_zero_vector_names_the_first_in_id_order(tmp_path, small_batches) -> None:
    np.savez(
        tmp_path / "v.npz", ids=np.array(["z1", "a", "z2"]), vectors=np.array([[0, 0], [1, 2], [0, 0]], np.float32)
    )
    with pytest.raises(InputError, match=r"v\.npz: a zero vector for anchor 'z2'$"):
        write_vectors_for(["a", "z2", "z1"], tmp_path / "v.npz", tmp_path / "out.npy", what="anchor")


def test_null_embedding_names_its_row_in_the_file(tmp_path, small_batches) -> None:
    rows = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], None, [1.0, 0.0]]
    pq.write_table(vectors_table(list("abcdef"), rows), tmp_path / "v.parquet", row_group_size=3)
    with pytest.raises(InputError, match=r"v\.parquet, row 5, column 'embedding': embedding is null$"):
        write_vectors_for(["a"], tmp_path / "v.parquet", tmp_path / "out.npy", what="doc")


def test_ragged_embeddings_name_the_row(tmp_path, small_batches) -> None:
    rows = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0, 2.0], [1.0]]
    pq.write_table(vectors_table(list("abcde"), rows), tmp_path / "v.parquet", row_group_size=2)
    with pytest.raises(
        InputError, match=r"v\.parquet, row 4, column 'embedding': embedding has 3 values, row 1 has 2$"
    ):
        write_vectors_for(["a"], tmp_path / "v.parquet", tmp_path / "out.npy", what="doc")


def test_a_null_embedding_is_reported_before_an_earlier_ragged_one(tmp_path, small_batches) -> None:
    rows = [[1.0, 0.0], [1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], None]
    pq.write_table(vectors_table(list("abcdef"), rows), tmp_path / "v.parquet", row_group_size=2)
    with pytest.raises(InputError, match=r"row 6, column 'embedding': embedding is null$"):
        write_vectors_for(["a"], tmp_path / "v.parquet", tmp_path / "out.npy", what="doc")


def test_malformed_files_are_input_errors(tmp_path) -> None:
    out = tmp_path / "out.npy"
    with pytest.raises(InputError, match="vectors file not found"):
        write_vectors_for(["a"], tmp_path / "absent.parquet", out, what="doc")
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="not a Parquet file with columns 'id' and 'embedding'"):
        write_vectors_for(["a"], tmp_path / "text.parquet", out, what="doc")
    pq.write_table(pa.table({"id": ["a"], "vector": [[1.0]]}), tmp_path / "cols.parquet")
    with pytest.raises(InputError, match=r"'id' and 'embedding' \(no column 'embedding'\)"):
        write_vectors_for(["a"], tmp_path / "cols.parquet", out, what="doc")
    pq.write_table(pa.table({"id": ["a"], "embedding": ["1 0"]}), tmp_path / "str.parquet")
    with pytest.raises(InputError, match="embedding must be a list of numbers, is string"):
        write_vectors_for(["a"], tmp_path / "str.parquet", out, what="doc")
    np.savez(tmp_path / "keys.npz", names=np.array(["a"]), vectors=np.ones((1, 2)))
    with pytest.raises(InputError, match=r"\.npz must hold arrays 'ids' and 'vectors', has \['names', 'vectors'\]"):
        write_vectors_for(["a"], tmp_path / "keys.npz", out, what="doc")
    np.savez(tmp_path / "count.npz", ids=np.array(["a", "b"]), vectors=np.ones((3, 2)))
    with pytest.raises(InputError, match=r"'ids' has shape \(2,\), 'vectors' \(3, 2\)"):
        write_vectors_for(["a"], tmp_path / "count.npz", out, what="doc")
    (tmp_path / "zip.npz").write_text("not a zip")
    with pytest.raises(InputError, match=r"not an \.npz file"):
        write_vectors_for(["a"], tmp_path / "zip.npz", out, what="doc")
    assert not out.exists()


def test_npy_needs_a_folder_with_exactly_one_ids_file(tmp_path) -> None:
    out = tmp_path / "out.npy"
    folder = tmp_path / "vectors"
    folder.mkdir()
    np.save(folder / "vectors.npy", ROWS)
    with pytest.raises(InputError, match=r"a \.npy vectors file needs its ids: put it in a folder"):
        write_vectors_for(["a"], folder / "vectors.npy", out, what="doc")
    with pytest.raises(InputError, match=r"needs its ids beside vectors\.npy: one of ids\.npy or ids\.parquet"):
        write_vectors_for(["a"], folder, out, what="doc")
    pq.write_table(pa.table({"id": IDS[:6]}), folder / "ids.parquet")
    with pytest.raises(InputError, match=r"'ids' has shape \(6,\), 'vectors' \(7, 5\)"):
        write_vectors_for(["a"], folder, out, what="doc")
    np.save(folder / "ids.npy", np.array(IDS))
    with pytest.raises(InputError, match=r"one of ids\.npy or ids\.parquet"):
        write_vectors_for(["a"], folder, out, what="doc")
    assert not out.exists()


def test_an_error_leaves_no_output_and_no_temp_file(tmp_path, small_batches) -> None:
    out_dir = tmp_path / "work"
    out_dir.mkdir()
    (out_dir / "docs.npy").write_bytes(b"previous")
    pq.write_table(vectors_table(IDS, list(ROWS)), tmp_path / "v.parquet", row_group_size=3)
    with pytest.raises(InputError, match="have no vector"):
        write_vectors_for(["a", "nope"], tmp_path / "v.parquet", out_dir / "docs.npy", what="doc")
    assert [p.name for p in out_dir.iterdir()] == ["docs.npy"]
    assert (out_dir / "docs.npy").read_bytes() == b"previous"  # replaced only when complete
    write_vectors_for(["a"], tmp_path / "v.parquet", out_dir / "docs.npy", what="doc")
    assert [p.name for p in out_dir.iterdir()] == ["docs.npy"]
    assert (out_dir / "docs.npy").read_bytes() == npy_bytes(unit(ROWS[[0]]))


# --- the stage -------------------------------------------------------------------------------


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
    assert ref.dim == 2 and ref.embedding["docs"].rows == 4
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


def test_stage_rejects_vectors_of_different_dimensions(tmp_path) -> None:
    write_inputs(tmp_path)
    folder = tmp_path / "docs3"
    folder.mkdir()
    np.save(folder / "vectors.npy", np.eye(4, 3, dtype=np.float32) + 0.1)
    np.save(folder / "ids.npy", np.array(["d1", "d2", "d3", "d4"]))
    config = PipelineConfig.from_dict(
        {"embed": {"anchor_vectors": str(tmp_path / "anchors.parquet"), "doc_vectors": str(folder)}}
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
    with pytest.raises(InputError, match=r"anchor and doc vectors differ in dimension: \[2, 3\]"):
        stages.embed_stage(work, config=config.embed, store_root=tmp_path / "store")


def test_vectors_given_alone_are_a_config_error() -> None:
    from negminer.errors import ConfigError

    with pytest.raises(ConfigError, match="anchor_vectors and doc_vectors"):
        PipelineConfig.from_dict({"embed": {"anchor_vectors": "a.parquet"}})
