"""``strategy: auto``: the preset chosen from curation's estimate of how many candidates are relevant.

Which hardness trains the better model depends on how complete the given positives are. When
few unlabelled relevant documents hide among the candidates (one judged document per query,
as in SciFact), the top-ranked non-positives after curation are the most useful negatives;
when many do (NFCorpus: dozens of relevant documents per query), the top ranks are full of
them and SimANS, which samples below the positive's score, trains the better model
(docs/benchmarks.md). Curation's cleanlab estimate ``noise.negatives_relevant`` (the share of
candidates that are relevant) tells the two apart: below ``auto_naive_below`` auto is
``naive``, otherwise (and when curation is off or skipped, so nothing was estimated) ``simans``.

Settings the user changed from their defaults override the chosen preset, as they override
any named preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from negminer.config import STRATEGY_PRESETS, SelectionConfig
from negminer.curation.confident import few_candidates_relevant

AUTO = "auto"
_Selection = TypeVar("_Selection", bound=SelectionConfig)


def auto_choice(config: SelectionConfig, noise: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What ``strategy: auto`` chose and from what (the manifest's record); None for any other strategy."""
    if config.strategy != AUTO:
        return None
    few = few_candidates_relevant(noise, config.auto_naive_below)
    if few is None:
        chosen, reason = "simans", "curation estimated nothing (off or skipped)"
    elif few:
        chosen, reason = "naive", "few candidates are relevant"
    else:
        chosen, reason = "simans", "many candidates are relevant"
    return {
        "chosen": chosen,
        "reason": reason,
        "negatives_relevant": (noise or {}).get("negatives_relevant"),
        "auto_naive_below": config.auto_naive_below,
    }


def resolve_strategy(config: _Selection, noise: Mapping[str, Any] | None) -> _Selection:
    """`config` with ``strategy: auto`` replaced by the preset it chooses (any other strategy: unchanged).

    Example:
        >>> from negminer.config import SelectionConfig
        >>> resolve_strategy(SelectionConfig(), {"negatives_relevant": 0.02}).sampling_strategy
        'top'
    """
    choice = auto_choice(config, noise)
    if choice is None:
        return config
    defaults = type(config)().model_dump()
    changed = {key: value for key, value in config.model_dump().items() if value != defaults[key]}
    chosen = choice["chosen"]
    return type(config).model_validate({**STRATEGY_PRESETS[chosen], **changed, "strategy": chosen})
