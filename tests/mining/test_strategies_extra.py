"""Curation flags, semi-hard band, calibrated bounds, SimANS sampling and the presets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from negminer.config import STRATEGY_PRESETS, MineConfig, PipelineConfig
from negminer.errors import ConfigError
from negminer.mining.derive import SELECT_OPTIONS
from negminer.mining.search import CANDIDATE_SCHEMA
from negminer.mining.strategies import (
    REASONS,
    calibrated_bounds,
    pair_priority,
    select_negatives,
    simans_keys,
    stable_hash64,
)


def table(rows: list[dict], **extra: list) -> pa.Table:
    defaults = {
        "positive_score": 0.8,
        "is_positive": False,
        "same_text_as_positive": False,
        "same_text_as_anchor": False,
    }
    out = pa.Table.from_pylist([{**defaults, **row} for row in rows], schema=CANDIDATE_SCHEMA)
    for name, values in extra.items():
        out = out.append_column(name, pa.array(values, pa.bool_()))
    return out


def ladder(anchor: int, scores: list[float], positive_score: float = 0.8) -> list[dict]:
    """One anchor's candidates, doc_idx == rank, no positives among them."""
    return [
        {"anchor_idx": anchor, "doc_idx": r, "rank": r, "score": s, "positive_score": positive_score}
        for r, s in enumerate(scores)
    ]


# sentence-transformers' naive top-k: every rule off, top sampling; tests override what they test.
NAIVE = MineConfig(strategy="naive").model_dump(include=SELECT_OPTIONS)


def select(t: pa.Table, **options):
    n_anchors = max(t.column("anchor_idx").to_pylist()) + 1
    n_docs = max(t.column("doc_idx").to_pylist()) + 1
    return select_negatives(
        t,
        anchor_hash=stable_hash64([f"a{i}" for i in range(n_anchors)]),
        doc_hash=stable_hash64([f"d{i}" for i in range(n_docs)]),
        **(NAIVE | options),
    )


def reasons(sel) -> list[str]:
    return sel.candidates.column("reason").to_pylist()


def picked(sel, anchor: int = 0) -> list[int]:
    t = sel.candidates.to_pydict()
    rows = zip(t["anchor_idx"], t["doc_idx"], t["negative_slot"], strict=True)
    rows = [(s, d) for a, d, s in rows if a == anchor and s]
    return [d for _, d in sorted(rows)]


SCORES = [0.75, 0.7, 0.65, 0.6, 0.55, 0.5]


# --- reasons and curation flags -------------------------------------------------------------


def test_reasons_order_puts_curation_flags_after_the_identity_rules():
    assert REASONS[:6] == (
        "positive",
        "same_text_as_positive",
        "same_text_as_anchor",
        "false_negative",
        "audit_decision",
        "duplicate_text",
    )
    assert REASONS[-2:] == ("surplus", "selected")
    assert len(set(REASONS)) == len(REASONS)


def test_flagged_false_negative_is_dropped_and_replaced_by_the_next_candidate():
    flags = [True, False, None, False, False, False]
    sel = select(table(ladder(0, SCORES), flagged_false_negative=flags), num_negatives=3)
    assert reasons(sel)[0] == "false_negative"
    assert picked(sel) == [1, 2, 3]  # a null flag counts as not flagged
    assert sel.reason_counts["false_negative"] == 1


def test_excluded_by_audit_drops_with_audit_decision():
    flags = [False, True, False, False, False, False]
    sel = select(table(ladder(0, SCORES), excluded_by_audit=flags), num_negatives=2)
    assert reasons(sel)[1] == "audit_decision"
    assert picked(sel) == [0, 2]


def test_identity_reasons_win_over_curation_flags_and_flags_over_windows():
    rows = ladder(0, SCORES)
    rows[0]["is_positive"] = True
    flagged = [True, True, False, False, False, False]
    audited = [False, True, True, False, False, False]
    sel = select(
        table(rows, flagged_false_negative=flagged, excluded_by_audit=audited),
        num_negatives=1,
        range_min=4,
    )
    assert reasons(sel)[:4] == ["positive", "false_negative", "audit_decision", "below_range_min"]


def test_select_negatives_keeps_extra_columns_and_adds_reason_and_slot():
    t = table(ladder(0, SCORES), flagged_false_negative=[False] * 6)
    sel = select(t, num_negatives=2)
    assert sel.candidates.column_names == [*t.column_names, "reason", "negative_slot"]


def test_a_document_text_seen_at_a_better_rank_is_dropped_as_duplicate_text():
    # docs 1 and 3 share a text (group 7); doc 3 is ranked lower, so it is the duplicate
    groups = np.array([0, 7, 2, 7, 4, 5])
    sel = select(table(ladder(0, SCORES)), num_negatives=3, doc_text_group=groups)
    assert reasons(sel)[3] == "duplicate_text"
    assert picked(sel) == [0, 1, 2]
    assert select(table(ladder(0, SCORES)), num_negatives=4, doc_text_group=groups).candidates.column(
        "negative_slot"
    ).to_pylist() == [1, 2, 3, None, 4, None]


def test_duplicate_text_is_per_anchor_and_applies_even_if_the_first_copy_was_dropped():
    groups = np.array([0, 7, 2, 7, 4, 5])
    rows = ladder(0, SCORES) + ladder(1, SCORES)
    flagged = [False, True, False, False, False, False] * 2
    sel = select(table(rows, flagged_false_negative=flagged), num_negatives=3, doc_text_group=groups)
    assert reasons(sel)[:6] == reasons(sel)[6:]
    assert reasons(sel)[1] == "false_negative" and reasons(sel)[3] == "duplicate_text"


# --- semi-hard band -------------------------------------------------------------------------


def test_semi_hard_keeps_scores_below_the_positive_and_within_the_margin():
    scores = [0.85, 0.8, 0.79, 0.75, 0.7, 0.69, 0.5]
    sel = select(table(ladder(0, scores)), num_negatives=10, semi_hard_margin=0.1)
    # 0.85 and 0.8 are not below the positive (0.8); 0.69 and 0.5 are more than 0.1 below
    out, keep = "semi_hard_band", "selected"
    assert reasons(sel) == [out, out, keep, keep, keep, out, out]


def test_semi_hard_combines_with_absolute_margin():
    sel = select(table(ladder(0, [0.79, 0.75, 0.72])), num_negatives=10, semi_hard_margin=0.1, absolute_margin=0.04)
    assert reasons(sel) == ["absolute_margin", "selected", "selected"]


# --- calibrated bounds ----------------------------------------------------------------------


def calibration_table(rng: np.random.Generator, scale: float = 1.0, shift: float = 0.0) -> pa.Table:
    rows = []
    for a in range(20):
        positive = rng.uniform(0.4, 0.9)
        scores = np.sort(rng.uniform(0.0, 0.9, 15))[::-1]
        rows += ladder(a, [s * scale + shift for s in scores], positive * scale + shift)
    return table(rows)


def test_calibrated_bounds_are_percentiles_of_the_anchors_positive_scores():
    t = calibration_table(np.random.default_rng(0))
    positives = np.array(t.column("positive_score").to_pylist()[::15], np.float64)
    low, high = calibrated_bounds(t, min_score_percentile=10, max_score_percentile=60)
    assert low == pytest.approx(np.percentile(positives, 10))
    assert high == pytest.approx(np.percentile(positives, 60))
    assert calibrated_bounds(t, min_score_percentile=None, max_score_percentile=None) == (None, None)


def test_calibrated_selection_uses_its_own_reasons():
    t = calibration_table(np.random.default_rng(1))
    low, high = calibrated_bounds(t, min_score_percentile=5, max_score_percentile=50)
    sel = select(t, num_negatives=50, min_score_percentile=5, max_score_percentile=50)
    score = np.array(t.column("score").to_pylist())
    why = np.array(reasons(sel))
    assert np.all(why[score > np.float32(high)] == "above_max_score_percentile")
    assert np.all(why[score < np.float32(low)] == "below_min_score_percentile")
    assert np.all(why[(score <= np.float32(high)) & (score >= np.float32(low))] == "selected")


def test_calibrated_selection_carries_over_an_affine_change_of_score_scale():
    base = calibration_table(np.random.default_rng(2))
    scaled = calibration_table(np.random.default_rng(2), scale=0.5, shift=0.3)
    options = {"num_negatives": 4, "min_score_percentile": 10, "max_score_percentile": 40}
    assert reasons(select(base, **options)) == reasons(select(scaled, **options))
    # an absolute bound does not carry over
    absolute = {"num_negatives": 4, "max_score": 0.5}
    assert reasons(select(base, **absolute)) != reasons(select(scaled, **absolute))


# --- SimANS sampling ------------------------------------------------------------------------


def simans_table() -> pa.Table:
    return table([row for a in range(6) for row in ladder(a, list(np.linspace(0.95, 0.05, 40)), 0.7)])


def test_simans_is_deterministic_seeded_and_row_order_independent():
    t = simans_table()
    first = select(t, num_negatives=5, sampling_strategy="simans", seed=3)
    assert first.candidates.equals(select(t, num_negatives=5, sampling_strategy="simans", seed=3).candidates)
    shuffled = t.take(np.random.default_rng(0).permutation(t.num_rows))
    again = select(shuffled, num_negatives=5, sampling_strategy="simans", seed=3)
    assert {a: picked(again, a) for a in range(6)} == {a: picked(first, a) for a in range(6)}
    other = select(t, num_negatives=5, sampling_strategy="simans", seed=4)
    assert [picked(other, a) for a in range(6)] != [picked(first, a) for a in range(6)]


def test_simans_concentrates_near_positive_plus_b():
    t = simans_table()
    target = 0.7 - 0.1

    def spread(strategy: str) -> float:
        sel = select(t, num_negatives=5, sampling_strategy=strategy, seed=1, simans_a=200.0, simans_b=-0.1)
        chosen = sel.candidates.filter(pc.equal(sel.candidates.column("reason"), "selected"))
        return float(np.mean(np.abs(np.array(chosen.column("score").to_pylist()) - target)))

    assert spread("simans") < 0.06 < spread("random")


def test_simans_keys_draw_in_proportion_to_the_weights():
    scores = np.array([0.6, 0.5, 0.3], np.float32)
    positive = np.full(3, 0.6, np.float32)
    a, b = 10.0, 0.0
    weights = np.exp(-a * (scores - positive - b) ** 2)
    firsts = np.zeros(3)
    anchor_hash = stable_hash64([f"anchor-{i}" for i in range(4000)])
    doc_hash = stable_hash64(["x", "y", "z"])
    for h in anchor_hash:
        keys = simans_keys(pair_priority(np.full(3, h, np.uint64), doc_hash, 9), scores, positive, a=a, b=b)
        firsts[np.argmin(keys)] += 1
    np.testing.assert_allclose(firsts / firsts.sum(), weights / weights.sum(), atol=0.03)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sampling_strategy": "best"}, "sampling_strategy"),
        ({"max_score_percentile": 120}, "max_score_percentile"),
        ({"num_negatives": 0}, "num_negatives"),
    ],
)
def test_bad_options_raise_with_the_option_named(options, message):
    with pytest.raises(ValueError, match=message):
        select(table(ladder(0, SCORES)), **options)


def test_a_table_without_the_search_columns_is_refused():
    t = table(ladder(0, SCORES)).drop_columns(["positive_score"])
    with pytest.raises(ValueError, match="positive_score"):
        select(t)


# --- presets --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(STRATEGY_PRESETS))
def test_each_preset_sets_its_values_and_round_trips(name):
    config = MineConfig(strategy=name)
    for key, value in STRATEGY_PRESETS[name].items():
        assert getattr(config, key) == value
    assert MineConfig.model_validate(config.model_dump()) == config


def test_the_defaults_are_the_simans_preset():
    assert MineConfig().model_dump(exclude={"strategy"}) == MineConfig(strategy="simans").model_dump(
        exclude={"strategy"}
    )


def test_explicit_options_override_the_preset():
    config = PipelineConfig.from_dict({"mine": {"strategy": "positive-aware", "relative_margin": 0.1}})
    assert config.mine.relative_margin == 0.1 and config.mine.strategy == "positive-aware"
    from_option = PipelineConfig.from_dict({"mine": {"relative_margin": 0.2}}, **{"mine.strategy": "positive-aware"})
    assert from_option.mine.relative_margin == 0.2


def test_presets_differ_and_naive_turns_every_filter_off():
    naive = MineConfig(strategy="naive", relative_margin=None)
    assert naive.relative_margin is None and naive.sampling_strategy == "top"
    assert MineConfig(strategy="semi-hard").semi_hard_margin == 0.1
    assert MineConfig(strategy="calibrated").max_score_percentile is not None
    assert MineConfig(strategy="simans").sampling_strategy == "simans"


@pytest.mark.parametrize(
    "mine",
    [
        {"strategy": "best"},
        {"min_score_percentile": 60, "max_score_percentile": 40},
        {"semi_hard_margin": 0},
        {"sampling_strategy": "weighted"},
    ],
)
def test_bad_strategy_settings_are_config_errors(mine):
    with pytest.raises(ConfigError, match="mine"):
        PipelineConfig.from_dict({"mine": mine})
