"""Config validation: values that would crash a stage are refused up front."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from negminer.config import CurateConfig, MineConfig, PipelineConfig
from negminer.errors import ConfigError


@pytest.mark.parametrize(("model", "largest"), [(MineConfig, 2**64 - 1), (CurateConfig, 2**32 - 1)])
def test_a_negative_seed_is_refused(model, largest):
    """Sampling mixes seeds as unsigned 64-bit integers; curation's classifier takes scikit-learn's
    random_state, which stops at 2**32 - 1."""
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        model(seed=-1)
    with pytest.raises(ValidationError, match="less than or equal to"):
        model(seed=largest + 1)
    assert model(seed=0).seed == 0 and model(seed=largest).seed == largest


def test_the_largest_curation_seed_fits_every_classifier():
    from negminer.curation.confident import make_classifier

    make_classifier("hist_gradient_boosting", seed=CurateConfig(seed=2**32 - 1).seed).fit([[0.0], [1.0]], [0, 1])


@pytest.mark.parametrize("section", ["mine", "curate"])
def test_a_negative_seed_in_a_config_file_names_its_key(section):
    with pytest.raises(ConfigError, match=rf"{section}\.seed: Input should be greater than or equal to 0"):
        PipelineConfig.from_dict({section: {"seed": -1}})


def test_an_empty_section_is_no_settings_and_overrides_still_apply(tmp_path):
    (tmp_path / "c.yaml").write_text("mine:\ncurate:\nrun:\nschedule:\n")
    config = PipelineConfig.from_yaml(tmp_path / "c.yaml", **{"mine.num_negatives": 5})
    assert config.mine.num_negatives == 5 and config.curate == CurateConfig()
    assert config.run is None and config.schedule is None  # empty optional sections stay absent


def test_an_override_into_a_section_that_is_not_a_mapping_names_the_file_and_section(tmp_path):
    (tmp_path / "c.yaml").write_text("mine: 5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: mine: must be a mapping of settings, got 5"):
        PipelineConfig.from_yaml(tmp_path / "c.yaml", **{"mine.num_negatives": 5})
