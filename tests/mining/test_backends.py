"""embed.backend / embed.precision: each backend's vectors against PyTorch float32's on the shipped sample,
auto's choice, and the store keys that keep vectors of different encodings apart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from negminer.config import EmbedConfig
from negminer.errors import ConfigError
from negminer.mining import backends
from negminer.mining.backends import Encoding, candidates, encoding_model, resolve_encoding
from negminer.mining.embedder import Embedder, store_key
from negminer.mining.encoder import encode

needs_openvino = pytest.mark.skipif(not backends.openvino_installed(), reason="openvino is not installed")


def _cpu_bf16() -> bool:
    return backends._fast_bf16("torch", "cpu")


@pytest.fixture(scope="module")
def sample_texts(sample_dir: Path) -> list[str]:
    """300 texts of the shipped sample: its anchors, then corpus texts (long and short)."""
    anchors = pq.read_table(sample_dir / "pairs.parquet").column("anchor").to_pylist()
    corpus = pq.read_table(sample_dir / "corpus.parquet").column("text").to_pylist()
    return (anchors + corpus)[:300]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache folder for the module: the model is converted to OpenVINO once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def float32_vectors(sample_texts: list[str]) -> np.ndarray:
    config = EmbedConfig(backend="torch", precision="float32", device="cpu")
    return encode(sample_texts, Embedder(config).model, batch_size=32, processes=1, precision="float32")


def _vectors(texts: list[str], backend: str, precision: str, cache_dir: Path) -> np.ndarray:
    config = EmbedConfig(backend=backend, precision=precision, device="cpu", cache_dir=str(cache_dir))
    embedder = Embedder(config)
    assert embedder.encoding == Encoding(backend, precision)
    return encode(texts, embedder.model, batch_size=32, processes=1, precision=embedder.encoding.autocast)


def _top5_agreement(vectors: np.ndarray, reference: np.ndarray, queries: int) -> float:
    """Share of each query's top-5 neighbours (among the other texts) that are the reference's."""
    same = 0
    for row in range(queries):
        ours, theirs = vectors[queries:] @ vectors[row], reference[queries:] @ reference[row]
        same += len(set(np.argsort(-ours)[:5]) & set(np.argsort(-theirs)[:5]))
    return same / (5 * queries)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "precision", "min_cosine"),
    [
        pytest.param("torch", "bfloat16", 0.9999, marks=pytest.mark.skipif(not _cpu_bf16(), reason="no native bf16")),
        pytest.param("openvino", "float32", 0.99999, marks=[needs_openvino, pytest.mark.extended]),
        pytest.param("openvino", "bfloat16", 0.9999, marks=needs_openvino),
    ],
)
def test_each_backend_gives_float32s_vectors_on_the_sample(
    backend, precision, min_cosine, sample_texts, float32_vectors, cache
) -> None:
    vectors = _vectors(sample_texts, backend, precision, cache)
    assert vectors.dtype == np.float32 and vectors.shape == float32_vectors.shape
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * float32_vectors, axis=1)
    assert cosines.mean() >= min_cosine and cosines.min() > 0.999
    assert _top5_agreement(vectors, float32_vectors, queries=200) >= 0.97


@pytest.mark.slow
def test_int8_runs_but_is_lossy(sample_texts, float32_vectors, cache) -> None:
    vectors = _vectors(sample_texts[:64], "torch", "int8", cache)
    cosine = float(np.mean(np.sum(vectors * float32_vectors[:64], axis=1)))
    assert 0.8 < cosine < 0.9999  # why auto never picks it (docs/embedding.md)


@pytest.mark.slow
@needs_openvino
def test_the_openvino_conversion_is_cached_on_disk(cache) -> None:
    _vectors(["a claim"], "openvino", "float32", cache)
    converted = list((cache / "openvino").glob("*/model.xml"))
    assert len(converted) == 1 and converted[0].with_suffix(".bin").stat().st_size > 80e6  # float32 weights
    stamp = converted[0].stat().st_mtime_ns
    backends._own_model.cache_clear()
    _vectors(["a claim"], "openvino", "bfloat16", cache)  # loaded again, another precision: the same conversion
    assert converted[0].stat().st_mtime_ns == stamp and len(list((cache / "openvino").glob("*/model.xml"))) == 1


@pytest.mark.slow
def test_auto_picks_the_fastest_encoding_that_passes_the_check(cache) -> None:
    config = EmbedConfig(device="cpu", cache_dir=str(cache))
    chosen = resolve_encoding(config)
    options = candidates(config)
    assert chosen == options[0]  # where bfloat16 is fast, it passes the check (mean cosine 0.99998)
    if backends.openvino_installed() and backends._fast_bf16("openvino", "cpu"):
        assert chosen == Encoding("openvino", "bfloat16")
    written = sorted((cache / "checks").glob("*.json"))
    if len(options) == 1:  # a CPU without fast bfloat16: torch float32, the reference, needs no check
        assert chosen == Encoding("torch", "float32") and not written
        return
    checks = json.loads(written[0].read_text())
    assert all(cosine >= 0.9999 for cosine in checks.values())


@pytest.mark.slow
def test_auto_falls_back_to_float32_when_nothing_is_close_enough(cache) -> None:
    config = EmbedConfig(device="cpu", cache_dir=str(cache), auto_min_cosine=1.0)
    assert resolve_encoding(config) == Encoding("torch", "float32")
    assert store_key(config) == store_key(EmbedConfig(device="cpu", backend="torch", precision="float32"))


def test_auto_never_tries_int8_and_keeps_worker_processes_on_torch_float32() -> None:
    assert all(option.precision != "int8" for option in candidates(EmbedConfig(device="cpu")))
    assert candidates(EmbedConfig(device="cpu", processes=2)) == [Encoding("torch", "float32")]
    assert resolve_encoding(EmbedConfig(device="cpu", processes=2)) == Encoding("torch", "float32")


@pytest.mark.slow
def test_each_encoding_has_its_own_store_folder() -> None:
    base = store_key(EmbedConfig(backend="torch", precision="float32"))
    assert len(base) == 64  # PyTorch float32 keeps the key stores were written under before backends
    assert store_key(EmbedConfig(backend="torch", precision="bfloat16")) == base + "-bfloat16"
    assert store_key(EmbedConfig(backend="torch", precision="int8")) == base + "-int8"
    assert store_key(EmbedConfig(backend="openvino", precision="bfloat16")) == base + "-openvino-bfloat16"
    assert store_key(EmbedConfig(backend="openvino", precision="float32")) == base + "-openvino"


def test_config_refuses_what_cannot_run() -> None:
    with pytest.raises(ValidationError, match="onnx is not implemented"):
        EmbedConfig(backend="onnx")
    with pytest.raises(ValidationError, match="processes to 1"):
        EmbedConfig(backend="openvino", processes=2)
    with pytest.raises(ValidationError, match="precision"):
        EmbedConfig(precision="float16")


@needs_openvino
def test_openvino_does_not_offer_int8(tmp_path) -> None:
    with pytest.raises(ConfigError, match="int8 runs on backend torch"):
        encoding_model(EmbedConfig(cache_dir=str(tmp_path)), Encoding("openvino", "int8"))


def test_a_missing_openvino_is_named(monkeypatch) -> None:
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    backends._resolve.cache_clear()
    with pytest.raises(ConfigError, match="pip install openvino"):
        resolve_encoding(EmbedConfig(backend="openvino", precision="bfloat16"))
    assert all(option.backend == "torch" for option in candidates(EmbedConfig(device="cpu")))


def test_the_cache_folder_follows_the_config_then_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("NEGMINER_CACHE_DIR", str(tmp_path / "env"))
    assert backends.cache_root(EmbedConfig()) == tmp_path / "env"
    assert backends.cache_root(EmbedConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.delenv("NEGMINER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert backends.cache_root(EmbedConfig()) == tmp_path / "xdg" / "negminer"
    assert os.fspath(backends.cache_root(EmbedConfig())).endswith("negminer")
