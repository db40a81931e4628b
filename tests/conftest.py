"""Shared fixtures: offline environment, the real packaged model, the shipped sample."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "scifact-sample"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def model():
    """The packaged all-MiniLM-L6-v2, loaded once per session."""
    from negminer.mining.encoder import load_model

    return load_model(None, device="cpu", max_seq_length=None)


@pytest.fixture(scope="session")
def store_root(tmp_path_factory) -> Path:
    """One embedding store for the whole session, so the sample is embedded once."""
    return tmp_path_factory.mktemp("embedding-store")


@pytest.fixture(scope="session")
def prefect_harness():
    """A real Prefect server for flow tests (started once per session)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def read_with_random_vectors(sample_dir: Path, folder: Path, config, *, pairs: int = 40) -> tuple[Path, Any, Any]:
    """The read stage on the sample's first `pairs` pairs, then seeded random unit vectors
    (16-d) in place of the model: (work folder, read reference, embed reference)."""
    import numpy as np
    import pyarrow.parquet as pq

    from negminer import stages
    from negminer.stages.refs import EmbedCounts, EmbedRef, ModelRef
    from negminer.stages.workdir import finish

    path = folder / "pairs.parquet"
    pq.write_table(pq.read_table(sample_dir / "pairs.parquet").slice(0, pairs), path)
    work = folder / "work"
    read = stages.read_stage(path, sample_dir / "corpus.parquet", work, config=config.input)
    rng = np.random.default_rng(0)
    for stem in ("anchors", "docs"):
        vectors = rng.normal(size=(read.counts[stem], 16)).astype(np.float32)
        np.save(work / f"{stem}.npy", vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    embedding = {
        stem: EmbedCounts(rows=read.counts[stem], embedded=read.counts[stem], reused=0, truncated=0)
        for stem in ("anchors", "docs")
    }
    model = ModelRef(name="random-16", path=None, fingerprint="random-16")
    embed = finish(work / "embed.json", EmbedRef(model=model, dim=16, embedding=embedding, store=None))
    return work, read, embed


@pytest.fixture(scope="session")
def random_vector_run(sample_dir: Path):
    """:func:`read_with_random_vectors` bound to the shipped sample."""
    return lambda folder, config, **kwargs: read_with_random_vectors(sample_dir, folder, config, **kwargs)


@pytest.fixture(scope="session")
def tiny_inputs(sample_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """pairs40 / pairs42 (the first 40 and 42 sample pairs) and a 100-doc corpus holding all positives."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("tiny")
    pairs = pq.read_table(sample_dir / "pairs.parquet").slice(0, 42)
    corpus = pq.read_table(sample_dir / "corpus.parquet").to_pylist()
    wanted = set(pairs.column("positive_id").to_pylist())
    rows = [r for r in corpus if r["id"] in wanted]
    rows += [r for r in corpus if r["id"] not in wanted][: 100 - len(rows)]
    rows.sort(key=lambda r: int(r["id"]))
    pq.write_table(pairs.slice(0, 40), folder / "pairs40.parquet")
    pq.write_table(pairs, folder / "pairs42.parquet")
    pq.write_table(pa.Table.from_pylist(rows), folder / "corpus.parquet")
    return {
        "pairs40": folder / "pairs40.parquet",
        "pairs42": folder / "pairs42.parquet",
        "corpus": folder / "corpus.parquet",
    }


@pytest.fixture(scope="session")
def second_model(tmp_path_factory) -> Path:
    """A real second model: the packaged all-MiniLM-L6-v2 cut to its first two layers, saved locally."""
    from sentence_transformers import SentenceTransformer

    from negminer.mining.encoder import resolve_model_path

    model = SentenceTransformer(str(resolve_model_path(None)), device="cpu")
    bert = model[0].auto_model
    bert.encoder.layer = bert.encoder.layer[:2]
    bert.config.num_hidden_layers = 2
    folder = tmp_path_factory.mktemp("second-model") / "minilm-2-layers"
    model.save(str(folder))
    return folder
