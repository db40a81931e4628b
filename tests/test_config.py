"""Config validation: values that would crash a stage are refused up front."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from negminer.config import CurateConfig, MineConfig, PipelineConfig
from negminer.errors import ConfigError


@pytest.mark.parametrize("model", [MineConfig, CurateConfig])
def test_a_negative_seed_is_refused(model):
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        model(seed=-1)
    with pytest.raises(ValidationError, match="less than or equal to"):
        model(seed=2**64)  # seeds are mixed as unsigned 64-bit integers
    assert model(seed=0).seed == 0 and model(seed=2**64 - 1).seed == 2**64 - 1


@pytest.mark.parametrize("section", ["mine", "curate"])
def test_a_negative_seed_in_a_config_file_names_its_key(section):
    with pytest.raises(ConfigError, match=rf"{section}\.seed: Input should be greater than or equal to 0"):
        PipelineConfig.from_dict({section: {"seed": -1}})
