"""curate_candidates on the planted-error world (tests/curation/conftest.py)."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from curation_world import ANCHORS_PER_TOPIC, DOCS_PER_TOPIC, TOPICS, WRONG_PAIR

from negminer.config import CurateConfig, PipelineConfig
from negminer.curation import curate_candidates, training_pairs
from negminer.curation.curate import score_pairs
from negminer.curation.policy import apply_policies
from negminer.errors import ConfigError


@pytest.fixture(scope="session")
def scored(world):
    return score_pairs(world.candidates, **world.kwargs(), config=CurateConfig())


@pytest.fixture(scope="session")
def result(world, scored):
    return apply_policies(scored, world.candidates, config=CurateConfig())


def _flags(result, kind: str) -> pa.Table:
    return result.flagged.filter(pc.equal(result.flagged.column("kind"), kind))


def _hits(flagged: pa.Table, anchor: int, doc: int) -> int:
    return pc.sum(
        pc.and_(pc.equal(flagged.column("anchor_idx"), anchor), pc.equal(flagged.column("doc_idx"), doc))
    ).as_py()


def test_paraphrase_of_a_positive_is_flagged_near_duplicate_once_and_dropped(world, result):
    assert _hits(_flags(result, "near_duplicate"), 0, world.paraphrase) == 1
    assert _hits(result.flagged, 0, world.paraphrase) == 1, "one pair, one kind, one action"
    row = result.candidates.filter(
        pc.and_(
            pc.equal(result.candidates.column("anchor_idx"), 0),
            pc.equal(result.candidates.column("doc_idx"), world.paraphrase),
        )
    )
    assert row.column("flagged_false_negative").to_pylist() == [True]


def test_random_document_positive_is_flagged_false_positive(result):
    assert WRONG_PAIR in result.false_positive_pairs.tolist()
    assert WRONG_PAIR in result.excluded_pairs.tolist()  # default action: quarantine
    scores = result.pair_scores.sort_by("quality")
    assert scores.column("pair_idx")[0].as_py() == WRONG_PAIR  # the least trustworthy pair


def test_unlabelled_positives_are_flagged_and_true_negatives_kept(world, result):
    cands = result.candidates.filter(pc.invert(result.candidates.column("is_positive")))
    anchor = cands.column("anchor_idx").to_numpy()
    doc = cands.column("doc_idx").to_numpy()
    same_topic = (doc < TOPICS * DOCS_PER_TOPIC) & (doc // DOCS_PER_TOPIC == anchor // ANCHORS_PER_TOPIC)
    flagged = cands.column("flagged_false_negative").to_numpy(zero_copy_only=False)
    assert flagged[same_topic].mean() > 0.9
    assert flagged[~same_topic].mean() < 0.05


def test_result_contract(world, result):
    assert result.candidates.column_names == [*world.candidates.column_names, "relevance", "flagged_false_negative"]
    assert result.candidates.num_rows == world.candidates.num_rows
    assert result.candidates.column("relevance").type == pa.float32()
    for column in ("kind", "action", "anchor_idx", "doc_idx", "pair_idx", "quality", "relevance", "feature_score"):
        assert column in result.flagged.column_names
    assert set(result.flagged.column("kind").to_pylist()) <= {"false_negative", "false_positive", "near_duplicate"}
    counts = result.counts
    assert counts["false_positive"] == len(result.false_positive_pairs)
    assert counts["negatives_excluded"] == pc.sum(result.candidates.column("flagged_false_negative")).as_py()
    assert 0 <= result.noise["negatives_relevant"] <= 1 and 0 <= result.noise["positives_irrelevant"] <= 1
    assert result.pair_scores.num_rows == world.pairs.num_rows


def _same_table(left: pa.Table, right: pa.Table) -> bool:
    """Equal tables, NaN equal to NaN (the leave-one-out features are NaN here)."""
    if left.schema != right.schema or left.num_rows != right.num_rows:
        return False
    for name in left.column_names:
        x = left.column(name).to_numpy(zero_copy_only=False)
        y = right.column(name).to_numpy(zero_copy_only=False)
        if not (np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)):
            return False
    return True


def test_same_input_gives_same_flags(world, result):
    again = curate_candidates(world.candidates, **world.kwargs(), config=CurateConfig())
    assert _same_table(again.flagged, result.flagged)
    assert again.candidates.equals(result.candidates)
    assert np.array_equal(again.false_positive_pairs, result.false_positive_pairs)


@pytest.mark.parametrize("action", ["drop", "quarantine", "keep"])
def test_false_negative_policy(world, scored, action):
    out = apply_policies(
        scored, world.candidates, config=CurateConfig(false_negative_action=action, near_duplicate_action=action)
    )
    flagged = _flags(out, "false_negative")
    assert flagged.num_rows > 0
    assert set(flagged.column("action").to_pylist()) == {action}
    excluded = pc.sum(out.candidates.column("flagged_false_negative")).as_py() or 0
    assert (excluded > 0) == (action != "keep")


@pytest.mark.parametrize(("share", "action"), [(0.01, "keep"), (0.5, "drop"), (None, "drop")])
def test_auto_false_negative_policy_follows_the_estimated_share_of_relevant_candidates(world, scored, share, action):
    """Few relevant candidates: a flag is more often wrong than right, so auto keeps it as a negative."""
    estimated = scored._replace(noise={**scored.noise, "negatives_relevant": share})
    out = apply_policies(estimated, world.candidates, config=CurateConfig())
    assert CurateConfig().false_negative_action == "auto"
    assert set(_flags(out, "false_negative").column("action").to_pylist()) == {action}
    expected = apply_policies(scored, world.candidates, config=CurateConfig(false_negative_action=action))
    assert out.candidates.equals(expected.candidates)
    assert out.counts["negatives_excluded"] == expected.counts["negatives_excluded"]


def test_auto_false_negative_threshold_is_a_setting(world, scored):
    estimated = scored._replace(noise={**scored.noise, "negatives_relevant": 0.15})
    assert _flags(apply_policies(estimated, world.candidates), "false_negative").column("action")[0].as_py() == "drop"
    config = CurateConfig(false_negative_drop_from=0.2)
    out = apply_policies(estimated, world.candidates, config=config)
    assert set(_flags(out, "false_negative").column("action").to_pylist()) == {"keep"}


@pytest.mark.parametrize("false_negative_action", ["drop", "keep"])
def test_near_duplicate_keep_keeps_it_whatever_the_false_negative_policy(world, scored, false_negative_action):
    config = CurateConfig(false_negative_action=false_negative_action, near_duplicate_action="keep")
    out = apply_policies(scored, world.candidates, config=config)
    row = out.candidates.filter(
        pc.and_(
            pc.equal(out.candidates.column("anchor_idx"), 0),
            pc.equal(out.candidates.column("doc_idx"), world.paraphrase),
        )
    )
    assert row.column("flagged_false_negative").to_pylist() == [False]
    assert _hits(out.flagged, 0, world.paraphrase) == 1
    assert _flags(out, "near_duplicate").column("action").to_pylist() == ["keep"]


@pytest.mark.parametrize("action", ["drop", "quarantine", "keep"])
def test_false_positive_policy(world, scored, action):
    out = apply_policies(scored, world.candidates, config=CurateConfig(false_positive_action=action))
    assert out.false_positive_action == action
    assert WRONG_PAIR in out.false_positive_pairs.tolist()
    kept = training_pairs(world.pairs, out.excluded_pairs)
    assert (WRONG_PAIR in kept.column("pair_idx").to_pylist()) == (action == "keep")
    assert set(_flags(out, "false_positive").column("action").to_pylist()) == {action}


def test_flagged_table_carries_ids(world, scored):
    ids = [f"a{i}" for i in range(len(world.anchor_texts))]
    docs = [f"d{i}" for i in range(len(world.doc_texts))]
    out = apply_policies(scored, world.candidates, anchor_ids=ids, doc_ids=docs)
    fp = _flags(out, "false_positive")
    assert f"a{WRONG_PAIR}" in fp.column("anchor_id").to_pylist()


def test_validation_names_the_fix(world):
    with pytest.raises(ValueError, match="candidates lack columns"):
        curate_candidates(world.candidates.drop_columns(["positive_score"]), **world.kwargs())
    kwargs = world.kwargs() | {"anchor_texts": world.anchor_texts[:-1]}
    with pytest.raises(ValueError, match="anchor vectors but"):
        curate_candidates(world.candidates, **kwargs)


def test_pipeline_config_has_a_curate_section():
    config = PipelineConfig.from_dict({"curate": {"false_positive_action": "keep", "max_rank": 30}})
    assert config.curate.false_positive_action == "keep"
    assert config.curate.max_rank == 30
    with pytest.raises(ConfigError, match=r"curate\.false_negative_action"):
        PipelineConfig.from_dict({"curate": {"false_negative_action": "ignore"}})


def _assert_not_judged(result) -> None:
    assert result.counts["false_negative"] == 0  # near-duplicates, which need no model, are their own kind
    assert result.counts["false_positive"] == 0 and len(result.excluded_pairs) == 0
    assert result.counts["skipped"] == 1
    assert result.candidates.column("relevance").null_count == result.candidates.num_rows
    assert result.pair_scores.column("relevance").null_count == result.pair_scores.num_rows


def test_one_anchor_family_is_not_judged_by_chance(world, caplog):
    # Equal anchor texts make one family, so every anchor falls into one fold: no training split.
    kwargs = world.kwargs() | {"anchor_texts": ["the same question"] * len(world.anchor_texts)}
    with caplog.at_level(logging.WARNING, logger="negminer.curation.curate"):
        result = curate_candidates(world.candidates, **kwargs)
    _assert_not_judged(result)
    assert result.counts["near_duplicate"] == 1  # the planted paraphrase needs no model
    assert f"got {len(world.anchor_texts)} anchor(s) with 1 distinct text(s) in 1 fold(s)" in caplog.text
    assert result.noise["skipped"] in caplog.text


def test_a_single_anchor_is_not_judged_by_chance(world):
    anchor = 5  # its candidates, renumbered as anchor 0 of a one-anchor run
    mine = world.candidates.filter(pc.equal(world.candidates.column("anchor_idx"), anchor))
    mine = mine.set_column(0, "anchor_idx", pa.array(np.zeros(mine.num_rows, np.int32)))
    positive = world.pairs.column("doc_idx")[anchor].as_py()
    result = curate_candidates(
        mine,
        pairs=pa.table(
            {
                "pair_idx": pa.array([0], pa.int32()),
                "anchor_idx": pa.array([0], pa.int32()),
                "doc_idx": pa.array([positive], pa.int32()),
            }
        ),
        anchor_vectors=world.anchor_vectors[anchor : anchor + 1],
        doc_vectors=world.doc_vectors,
        anchor_texts=world.anchor_texts[anchor : anchor + 1],
        doc_texts=world.doc_texts,
    )
    _assert_not_judged(result)
    assert not pc.any(result.candidates.column("flagged_false_negative")).as_py()


def test_no_given_positive_in_the_window_leaves_the_candidates_to_the_model(world, caplog):
    # Positives the search did not retrieve rank at the table's depth (41), beyond max_rank.
    unretrieved = world.candidates.filter(pc.invert(world.candidates.column("is_positive")))
    with caplog.at_level(logging.WARNING, logger="negminer.curation.curate"):
        result = curate_candidates(unretrieved, **world.kwargs(), config=CurateConfig(max_rank=30))
    assert result.counts["near_duplicate"] == 1  # the planted paraphrase
    assert result.noise["negatives_relevant"] is None
    assert WRONG_PAIR in result.false_positive_pairs.tolist()  # the population side still judges
    in_window = pc.less(unretrieved.column("rank"), 30)
    assert result.candidates.filter(in_window).column("relevance").null_count == 0
    assert "no given positive ranks below max_rank=30" in caplog.text


def test_candidates_beyond_max_rank_are_counted_in_the_log(world, caplog):
    rank = world.candidates.column("rank")
    depth = pc.max(rank).as_py() + 1  # search depth 40 + 1 positive per anchor
    beyond = pc.and_(pc.greater_equal(rank, 30), pc.invert(world.candidates.column("is_positive")))
    with caplog.at_level(logging.INFO, logger="negminer.curation.curate"):
        curate_candidates(world.candidates, **world.kwargs(), config=CurateConfig(max_rank=30))
    expected = f"{pc.sum(beyond).as_py()} of {world.candidates.num_rows} candidate rows (positives aside)"
    assert expected in caplog.text and f"curate.max_rank: {depth} judges every row" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="negminer.curation.curate"):
        curate_candidates(world.candidates, **world.kwargs(), config=CurateConfig(max_rank=depth))
    assert "beyond max_rank" not in caplog.text
