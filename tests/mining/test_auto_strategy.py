"""strategy auto: naive or simans, chosen from curation's estimate of the relevant candidates."""

from __future__ import annotations

import pytest

from negminer.config import STRATEGY_PRESETS, MineConfig, PipelineConfig, SelectionConfig
from negminer.mining.auto_strategy import auto_choice, resolve_strategy

FEW, MANY = {"negatives_relevant": 0.04}, {"negatives_relevant": 0.18}


def test_auto_is_the_default_and_its_fields_are_the_simans_preset():
    config = SelectionConfig()
    assert config.strategy == "auto"
    preset = SelectionConfig(strategy="simans")
    assert config.model_dump(exclude={"strategy"}) == preset.model_dump(exclude={"strategy"})


@pytest.mark.parametrize(("noise", "chosen"), [(FEW, "naive"), (MANY, "simans"), (None, "simans")])
def test_the_estimate_chooses_the_preset(noise, chosen):
    resolved = resolve_strategy(MineConfig(), noise)
    assert resolved == MineConfig(strategy=chosen)
    assert auto_choice(MineConfig(), noise)["chosen"] == chosen


def test_a_skipped_curation_estimates_nothing_and_keeps_simans():
    skipped = {"negatives_relevant": None, "positives_irrelevant": None, "skipped": "too few anchors"}
    assert resolve_strategy(SelectionConfig(), skipped).sampling_strategy == "simans"


def test_the_threshold_is_a_setting():
    config = MineConfig(auto_naive_below=0.2)
    assert resolve_strategy(config, MANY).strategy == "naive"
    assert auto_choice(config, MANY) == {
        "chosen": "naive",
        "reason": "few candidates are relevant",
        "negatives_relevant": 0.18,
        "auto_naive_below": 0.2,
    }


def test_options_the_user_changed_override_the_chosen_preset():
    config = PipelineConfig.from_dict({"mine": {"relative_margin": 0.05, "num_negatives": 5}}).mine
    resolved = resolve_strategy(config, FEW)
    assert resolved.strategy == "naive"
    assert resolved.relative_margin == 0.05 and resolved.num_negatives == 5
    assert resolved.sampling_strategy == STRATEGY_PRESETS["naive"]["sampling_strategy"] == "top"


def test_a_config_read_back_from_a_manifest_resolves_alike():
    """Every field is explicit after a round trip through JSON: changes are still told by value."""
    config = MineConfig.model_validate(MineConfig(num_negatives=2).model_dump(mode="json"))
    assert resolve_strategy(config, FEW) == MineConfig(strategy="naive", num_negatives=2)


@pytest.mark.parametrize("strategy", ["naive", "semi-hard", "simans", None])
def test_any_other_strategy_is_left_alone(strategy):
    config = MineConfig(strategy=strategy)
    assert resolve_strategy(config, FEW) is config
    assert auto_choice(config, FEW) is None
