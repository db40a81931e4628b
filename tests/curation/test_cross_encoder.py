"""The optional cross-encoder feature (a local model folder)."""

from __future__ import annotations

import numpy as np
import pytest

from negminer.config import CurateConfig
from negminer.curation import curate_candidates
from negminer.curation.cross_encoder import cross_encoder_scores, load_cross_encoder
from negminer.errors import ConfigError
from negminer.mining.encoder import resolve_model_path


def test_a_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a local model folder"):
        load_cross_encoder(tmp_path / "nowhere", device=None)


class _FakeCrossEncoder:
    """Scores a pair by shared words, and counts how many pairs it was asked about."""

    def __init__(self) -> None:
        self.asked = 0

    def predict(self, pairs, batch_size=64, show_progress_bar=False):
        self.asked += len(pairs)
        return np.array([len(set(a.split()) & set(b.split())) for a, b in pairs], np.float32)


def test_scores_follow_rows_and_each_pair_is_scored_once():
    model = _FakeCrossEncoder()
    scores = cross_encoder_scores(
        np.array([0, 0, 1, 0]),
        np.array([0, 1, 1, 0]),
        anchor_texts=["red apple", "green pear"],
        doc_texts=["a red apple", "green tea"],
        model=model,
        batch_size=CurateConfig().cross_encoder_batch_size,
    )
    assert scores.tolist() == [2.0, 0.0, 1.0, 2.0]
    assert model.asked == 3


@pytest.mark.slow
def test_curation_with_a_local_cross_encoder(world):
    # The packaged MiniLM folder loads as a CrossEncoder with a fresh (random) head: enough
    # to check the wiring offline; no trained cross-encoder ships with the environment.
    config = CurateConfig(
        cross_encoder=str(resolve_model_path(None)), cross_encoder_batch_size=256, max_rank=10, tail_samples=5
    )
    result = curate_candidates(world.candidates, **world.kwargs(), config=config)
    assert "feature_cross_encoder" in result.flagged.column_names
    assert np.isfinite(result.flagged.column("feature_cross_encoder").to_numpy()).all()


@pytest.mark.slow
def test_a_folder_loads_once_per_process_until_its_files_change(tmp_path):
    """Every curation and selection shard asks for the model: one load serves them, a retrained folder loads anew."""
    import shutil

    folder = tmp_path / "cross-encoder"
    shutil.copytree(resolve_model_path(None), folder)
    first = load_cross_encoder(folder, device="cpu")
    assert load_cross_encoder(folder, device="cpu") is first
    with (folder / "config.json").open("a") as config:
        config.write("\n")  # as a retraining rewrites it
    assert load_cross_encoder(folder, device="cpu") is not first
