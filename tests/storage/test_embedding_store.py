"""The content-addressed embedding store: round trips, model folders, reopening."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from negminer.errors import StorageError
from negminer.storage.embedding_store import EmbeddingStore
from negminer.textkeys import content_hashes

DIM = 8


def random_vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def keys(texts: list[str]) -> pa.Array:
    return content_hashes(texts)


def test_empty_store_finds_nothing(tmp_path):
    store = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    assert len(store) == 0
    assert store.lookup(keys(["a", "b"])).tolist() == [-1, -1]


def test_add_lookup_fetch_round_trip(tmp_path):
    store = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    texts = [f"text {i}" for i in range(10)]
    vectors = random_vectors(10)
    store.add(keys(texts), vectors)
    assert len(store) == 10
    positions = store.lookup(keys(texts))
    assert positions.dtype == np.int64
    assert (positions >= 0).all()
    np.testing.assert_array_equal(store.fetch(positions), vectors)
    # a lookup in another order, with unknown texts mixed in
    query = ["text 7", "unknown", "text 0", "text 7"]
    found = store.lookup(keys(query))
    assert found[1] == -1
    np.testing.assert_array_equal(store.fetch(found[[0, 2, 3]]), vectors[[7, 0, 7]])


def test_lookup_is_by_exact_text(tmp_path):
    store = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    store.add(keys(["Hello world"]), random_vectors(1))
    found = store.lookup(keys(["hello world", "Hello  world", "Hello world"]))
    assert found.tolist() == [-1, -1, 0]


def test_fetch_across_several_shards(tmp_path):
    store = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    first, second, third = random_vectors(4, 1), random_vectors(3, 2), random_vectors(5, 3)
    store.add(keys([f"a{i}" for i in range(4)]), first)
    store.add(keys([f"b{i}" for i in range(3)]), second)
    store.add(keys([f"c{i}" for i in range(5)]), third)
    assert len(store) == 12
    query = ["c4", "a0", "b2", "a3", "c0", "b0"]
    expected = np.stack([third[4], first[0], second[2], first[3], third[0], second[0]])
    np.testing.assert_array_equal(store.fetch(store.lookup(keys(query))), expected)


def test_add_accepts_a_sliced_hash_array(tmp_path):
    store = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    texts = [f"t{i}" for i in range(6)]
    vectors = random_vectors(6)
    store.add(keys(texts).slice(2, 3), vectors[2:5])
    found = store.lookup(keys(texts))
    assert (found[[0, 1, 5]] == -1).all()
    np.testing.assert_array_equal(store.fetch(found[2:5]), vectors[2:5])


def test_vectors_are_stored_as_float32(tmp_path):
    store = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    vectors = random_vectors(3).astype(np.float64)
    store.add(keys(["x", "y", "z"]), vectors)
    got = store.fetch(store.lookup(keys(["x", "y", "z"])))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, vectors, rtol=1e-6)


def test_shard_layout_on_disk(tmp_path):
    store = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    store.add(keys(["x", "y", "z"]), random_vectors(3))
    folder = tmp_path / "m1"
    key_files = list(folder.glob("shard-*.keys.npy"))
    vec_files = list(folder.glob("shard-*.vec.npy"))
    assert len(key_files) == 1 and len(vec_files) == 1
    stored_keys = np.load(key_files[0])
    assert stored_keys.dtype == np.uint8 and stored_keys.shape == (3, 16)
    assert stored_keys.tobytes() == b"".join(k.as_py() for k in keys(["x", "y", "z"]))
    assert np.load(vec_files[0]).shape == (3, DIM)
    # no temp files left behind
    assert not [p for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_a_different_model_gets_a_separate_folder(tmp_path):
    one = EmbeddingStore(tmp_path, model_fingerprint="model-one", dim=DIM, dtype="float32")
    two = EmbeddingStore(tmp_path, model_fingerprint="model-two", dim=DIM, dtype="float32")
    one.add(keys(["shared text"]), random_vectors(1, 1))
    assert one.folder != two.folder
    assert one.folder == tmp_path / "model-one" and two.folder == tmp_path / "model-two"
    assert two.lookup(keys(["shared text"])).tolist() == [-1]
    assert not list(two.folder.glob("shard-*"))
    two.add(keys(["shared text"]), random_vectors(1, 2))
    np.testing.assert_array_equal(two.fetch(two.lookup(keys(["shared text"]))), random_vectors(1, 2))
    np.testing.assert_array_equal(one.fetch(one.lookup(keys(["shared text"]))), random_vectors(1, 1))


def test_a_different_model_with_another_dimension_is_fine(tmp_path):
    EmbeddingStore(tmp_path, model_fingerprint="small", dim=DIM, dtype="float32")
    big = EmbeddingStore(tmp_path, model_fingerprint="big", dim=2 * DIM, dtype="float32")
    assert big.dim == 2 * DIM


def test_dimension_mismatch_on_reopen_raises(tmp_path):
    EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    with pytest.raises(StorageError, match="dimension"):
        EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM + 1, dtype="float32")


def test_vectors_of_the_wrong_shape_raise(tmp_path):
    store = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    with pytest.raises(StorageError):
        store.add(keys(["a", "b"]), np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(StorageError):
        store.add(keys(["a", "b"]), np.zeros((3, DIM), np.float32))
    assert len(store) == 0
    assert not list((tmp_path / "m1").glob("shard-*"))


def test_reopening_sees_earlier_shards(tmp_path):
    store = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    store.add(keys(["a", "b"]), random_vectors(2, 1))
    store.add(keys(["c"]), random_vectors(1, 2))
    del store
    again = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    assert len(again) == 3
    found = again.lookup(keys(["c", "a", "b"]))
    expected = np.concatenate([random_vectors(1, 2), random_vectors(2, 1)])
    np.testing.assert_array_equal(again.fetch(found), expected)
    # and it can keep adding
    again.add(keys(["d"]), random_vectors(1, 3))
    third = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    np.testing.assert_array_equal(third.fetch(third.lookup(keys(["d"]))), random_vectors(1, 3))


def test_float16_store_round_trips_as_float32(tmp_path):
    store = EmbeddingStore(tmp_path, model_fingerprint="m16", dim=DIM, dtype="float16")
    texts = [f"text {i}" for i in range(300)]
    vectors = random_vectors(300)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.add(keys(texts[:200]), vectors[:200])
    store.add(keys(texts[200:]), vectors[200:])
    on_disk = sorted((tmp_path / "m16").glob("shard-*.vec.npy"))
    assert [np.load(p).dtype for p in on_disk] == [np.float16, np.float16]
    fetched = EmbeddingStore(tmp_path, model_fingerprint="m16", dim=DIM, dtype="float16").fetch(
        store.lookup(keys(texts[::-1]))
    )
    assert fetched.dtype == np.float32
    np.testing.assert_array_equal(fetched, vectors[::-1].astype(np.float16).astype(np.float32))
    assert np.abs(fetched - vectors[::-1]).max() < 1e-3  # unit vectors: float16 keeps ~3 decimals


def test_reopening_a_store_with_another_dtype_raises(tmp_path):
    EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float32")
    with pytest.raises(StorageError, match="float32, not float16"):
        EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype="float16")
    with pytest.raises(StorageError, match="float32 or float16"):
        EmbeddingStore(tmp_path, model_fingerprint="m2", dim=DIM, dtype="float64")


@pytest.mark.parametrize(("dtype", "value"), [("float32", np.nan), ("float16", 70_000.0)])
def test_a_vector_that_is_not_finite_as_stored_is_refused(tmp_path, dtype, value):
    store = EmbeddingStore(tmp_path, model_fingerprint="m1", dim=DIM, dtype=dtype)
    vectors = random_vectors(3)
    vectors[1, 0] = value
    with pytest.raises(StorageError, match=rf"vector 1 is not finite as {dtype}"):
        store.add(keys(["a", "b", "c"]), vectors)
    assert store.lookup(keys(["a"])).tolist() == [-1]
