"""Shared fixtures: offline environment, the real packaged model, the shipped sample."""

from __future__ import annotations

import os
from pathlib import Path

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

    return load_model(device="cpu")


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
