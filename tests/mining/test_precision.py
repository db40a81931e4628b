"""embed.precision: bfloat16 autocast gives unit vectors close to float32's, kept apart from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from negminer import stages
from negminer.config import EmbedConfig, PipelineConfig
from negminer.errors import ConfigError
from negminer.mining.embedder import store_key
from negminer.mining.encoder import encode

TEXTS = [
    "Vitamin D supplementation reduces fracture risk.",
    "The mitochondria is the powerhouse of the cell.",
    "Aspirin lowers the risk of colorectal cancer.",
    "Statins reduce cardiovascular events in patients with high cholesterol.",
    "Smoking increases the risk of lung cancer.",
]


def test_bfloat16_vectors_are_unit_float32_close_to_float32s(model) -> None:
    full = encode(TEXTS, model, batch_size=32, processes=1, precision="float32")
    half = encode(TEXTS, model, precision="bfloat16", batch_size=32, processes=1)
    assert half.dtype == np.float32 and half.shape == full.shape
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-6)
    assert np.min(np.sum(full * half, axis=1)) > 0.999
    assert not np.array_equal(full, half)  # the forward pass really ran in bfloat16
    # the ranking between texts survives: each text's nearest other text is the same
    np.fill_diagonal(sims_full := full @ full.T, -1)
    np.fill_diagonal(sims_half := half @ half.T, -1)
    assert (sims_full.argmax(1) == sims_half.argmax(1)).all()


def test_bfloat16_with_processes_is_refused() -> None:
    with pytest.raises(ValidationError, match="processes to 1"):
        EmbedConfig(precision="bfloat16", processes=2)
    with pytest.raises(ConfigError, match="processes"):
        encode(TEXTS, object(), precision="bfloat16", processes=2, batch_size=32)


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValidationError, match="precision"):
        EmbedConfig(precision="float16")


def test_bfloat16_vectors_get_their_own_store_folder_and_work_folder(sample_dir: Path, tmp_path: Path) -> None:
    inputs = {"pairs": sample_dir / "pairs.parquet", "corpus": sample_dir / "corpus.parquet"}
    full = PipelineConfig.from_dict({"embed": {"backend": "torch", "precision": "float32"}})
    half = PipelineConfig.from_dict({"embed": {"backend": "torch", "precision": "bfloat16"}})
    assert store_key(half.embed) == store_key(full.embed) + "-bfloat16"
    assert stages.work_dir_for(tmp_path, "d", config=half, store=None, **inputs) != stages.work_dir_for(
        tmp_path, "d", config=full, store=None, **inputs
    )
