"""Frozen configuration models: the single home of negminer's defaults.

Every stage boundary takes one of these models; below them functions take plain keyword
arguments. A YAML file maps one to one onto :class:`PipelineConfig`::

    input:
      anchor_column: query
    mine:
      num_negatives: 5
      range_max: 50
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from negminer.errors import ConfigError

OnBadRows = Literal["fail", "quarantine"]
SamplingStrategy = Literal["top", "random"]
OutputFormat = Literal["triplet", "n-tuple"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputConfig(_Frozen):
    """How to read the pairs and corpus files."""

    anchor_column: str = "anchor"
    positive_column: str = "positive"
    anchor_id_column: str = "anchor_id"
    positive_id_column: str = "positive_id"
    text_column: str = "text"
    id_column: str = "id"
    title_column: str = "title"
    on_bad_rows: OnBadRows = Field(
        "quarantine",
        description="Row-level problems (null, empty, conflicting ids) go to rejects.parquet "
        "with a reason, or stop the run with an error naming file, row and column.",
    )


class EmbedConfig(_Frozen):
    """Which model embeds the texts, and how."""

    model: str | None = Field(
        None, description="Local sentence-transformers folder; None means packaged all-MiniLM-L6-v2."
    )
    batch_size: int = Field(32, ge=1)
    max_seq_length: int | None = Field(None, ge=1)
    device: str | None = Field(None, description="torch device; None picks CUDA when present.")
    chunk_size: int = Field(
        4096, ge=1, description="Texts embedded per stored shard (the unit of resume)."
    )


class MineConfig(_Frozen):
    """How candidates are retrieved and negatives chosen (sentence-transformers' names)."""

    num_negatives: int = Field(3, ge=1)
    search_depth: int = Field(
        100, ge=1, description="Candidates retrieved per anchor (before excluding positives)."
    )
    range_min: int = Field(0, ge=0, description="Skip candidates with raw rank below this.")
    range_max: int | None = Field(
        None, ge=1, description="Skip candidates with raw rank at or above this."
    )
    min_score: float | None = None
    max_score: float | None = None
    absolute_margin: float | None = Field(None, ge=0)
    relative_margin: float | None = Field(None, ge=0, lt=1)
    sampling_strategy: SamplingStrategy = "top"
    output_format: OutputFormat = "triplet"
    seed: int = 12
    search_batch_size: int = Field(4096, ge=1)

    @model_validator(mode="after")
    def _check_ranges(self) -> MineConfig:
        if self.range_max is not None and self.range_max <= self.range_min:
            raise ValueError(f"range_max ({self.range_max}) must be > range_min ({self.range_min})")
        if self.range_max is not None and self.range_max > self.search_depth:
            raise ValueError(
                f"range_max ({self.range_max}) must be <= search_depth ({self.search_depth})"
            )
        if (
            self.min_score is not None
            and self.max_score is not None
            and self.min_score >= self.max_score
        ):
            raise ValueError(f"min_score ({self.min_score}) must be < max_score ({self.max_score})")
        return self


class PipelineConfig(_Frozen):
    """Everything one mining run needs besides its input paths."""

    input: InputConfig = InputConfig()
    embed: EmbedConfig = EmbedConfig()
    mine: MineConfig = MineConfig()

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> PipelineConfig:
        """Load a YAML file; `overrides` are `section.key` values applied on top.

        Example:
            >>> PipelineConfig.from_yaml("nightly.yaml", **{"mine.num_negatives": 5})  # doctest: +SKIP
        """
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"{path}: config file not found") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        return cls.from_dict(raw, source=str(path), **overrides)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], *, source: str = "config", **overrides: Any
    ) -> PipelineConfig:
        """Validate a nested dict; errors name the offending key, e.g. `mine.num_negatives`."""
        merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            merged.setdefault(section, {})[key] = value
        try:
            return cls.model_validate(merged)
        except ValidationError as err:
            raise ConfigError(f"{source}: {_describe(err)}") from err


def _describe(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r}")
        else:
            parts.append(f"{key}: {item['msg']}")
    return "; ".join(parts)
