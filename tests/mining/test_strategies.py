"""Negative selection on hand-made candidate tables with known answers."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer.config import MineConfig
from negminer.mining.derive import SELECT_OPTIONS
from negminer.mining.search import CANDIDATE_SCHEMA, search_candidates
from negminer.mining.strategies import (
    REASONS,
    pair_priority,
    relative_bound,
    select_negatives,
    stable_hash64,
)
from negminer.textkeys import text_key

# sentence-transformers' naive top-k: every rule off, top sampling; tests override what they test.
NAIVE = MineConfig(strategy="naive").model_dump(include=SELECT_OPTIONS)


def candidates(rows: list[dict]) -> pa.Table:
    """A candidate table from rows; missing flags default to False, positive_score to 0.9."""
    defaults = {
        "positive_score": 0.9,
        "is_positive": False,
        "same_text_as_positive": False,
        "same_text_as_anchor": False,
    }
    full = [{**defaults, **row} for row in rows]
    return pa.Table.from_pylist(full, schema=CANDIDATE_SCHEMA)


def ladder(anchor: int, n: int, *, positives: tuple[int, ...] = (0,), top: float = 0.95, step: float = 0.05):
    """Rows for one anchor: doc_idx == rank, score falling by `step`, `positives` by rank."""
    return [
        {
            "anchor_idx": anchor,
            "doc_idx": rank,
            "rank": rank,
            "score": top - step * rank,
            "is_positive": rank in positives,
            "same_text_as_positive": rank in positives,
        }
        for rank in range(n)
    ]


def hashes(n_anchors: int, n_docs: int) -> dict[str, np.ndarray]:
    return {
        "anchor_hash": stable_hash64([f"anchor-{i}" for i in range(n_anchors)]),
        "doc_hash": stable_hash64([f"doc-{i}" for i in range(n_docs)]),
    }


def select(table: pa.Table, **options):
    n_anchors = max(table.column("anchor_idx").to_pylist()) + 1
    n_docs = max(table.column("doc_idx").to_pylist()) + 1
    return select_negatives(table, **hashes(n_anchors, n_docs), **(NAIVE | options))


def outcome(selection) -> dict[tuple[int, int], tuple[str, int | None]]:
    """(anchor_idx, doc_idx) -> (reason, negative_slot)."""
    t = selection.candidates.to_pydict()
    return {
        (a, d): (r, s)
        for a, d, r, s in zip(t["anchor_idx"], t["doc_idx"], t["reason"], t["negative_slot"], strict=True)
    }


def chosen(selection, anchor: int = 0) -> list[int]:
    """doc_idx of the anchor's negatives in slot order."""
    picked = [(s, d) for (a, d), (_, s) in outcome(selection).items() if a == anchor and s is not None]
    return [d for _, d in sorted(picked)]


def test_output_adds_reason_and_slot_columns():
    table = candidates(ladder(0, 5))
    sel = select(table, num_negatives=2)
    assert sel.candidates.column_names == [*table.column_names, "reason", "negative_slot"]
    assert sel.candidates.num_rows == table.num_rows
    assert set(sel.candidates.column("reason").to_pylist()) <= set(REASONS)
    assert sel.candidates.column("negative_slot").to_pylist() == [None, 1, 2, None, None]


@pytest.mark.parametrize("strategy", ["top", "random"])
@pytest.mark.parametrize("seed", [0, 1, 12, 99])
def test_a_positive_is_never_selected(strategy, seed):
    # the positives score highest and sit in the middle of the ranking, too
    rows = ladder(0, 6, positives=(0, 3)) + ladder(1, 6, positives=(5,))
    sel = select(candidates(rows), num_negatives=10, sampling_strategy=strategy, seed=seed)
    result = outcome(sel)
    for key in [(0, 0), (0, 3), (1, 5)]:
        assert result[key] == ("positive", None)
    assert len(chosen(sel, 0)) == 4 and len(chosen(sel, 1)) == 5


def test_range_min_and_range_max_count_raw_ranks():
    sel = select(candidates(ladder(0, 10)), num_negatives=10, range_min=2, range_max=5)
    result = outcome(sel)
    assert result[(0, 0)][0] == "positive"
    assert result[(0, 1)][0] == "below_range_min"
    assert [result[(0, r)][0] for r in (2, 3, 4)] == ["selected"] * 3
    assert [result[(0, r)][0] for r in range(5, 10)] == ["above_range_max"] * 5
    assert chosen(sel) == [2, 3, 4]


def test_range_counts_positives_among_the_ranks():
    # two positives at ranks 0 and 1: range_min=3 still drops raw rank 2
    sel = select(candidates(ladder(0, 8, positives=(0, 1))), num_negatives=10, range_min=3)
    result = outcome(sel)
    assert result[(0, 2)][0] == "below_range_min"
    assert chosen(sel) == [3, 4, 5, 6, 7]


def test_min_and_max_score():
    # scores 0.95, 0.85, ..., 0.05
    rows = ladder(0, 10, positives=(), step=0.1)
    sel = select(candidates(rows), num_negatives=10, min_score=0.3, max_score=0.7)
    result = outcome(sel)
    assert [result[(0, r)][0] for r in (0, 1, 2)] == ["above_max_score"] * 3
    assert [result[(0, r)][0] for r in (7, 8, 9)] == ["below_min_score"] * 3
    assert chosen(sel) == [3, 4, 5, 6]


def test_absolute_margin_keeps_scores_at_least_m_below_the_positive():
    rows = [
        {"anchor_idx": 0, "doc_idx": i, "rank": i, "score": s, "positive_score": 0.8}
        for i, s in enumerate([0.78, 0.75, 0.72, 0.65, 0.4])
    ]
    sel = select(candidates(rows), num_negatives=10, absolute_margin=0.1)
    assert [r for r, _ in outcome(sel).values()] == [
        "absolute_margin",
        "absolute_margin",
        "absolute_margin",
        "selected",
        "selected",
    ]


def test_relative_margin_with_a_positive_positive_score():
    # bound 0.8 * (1 - 0.1) = 0.72
    rows = [
        {"anchor_idx": 0, "doc_idx": i, "rank": i, "score": s, "positive_score": 0.8}
        for i, s in enumerate([0.79, 0.75, 0.73, 0.71, 0.3])
    ]
    sel = select(candidates(rows), num_negatives=10, relative_margin=0.1)
    assert [r for r, _ in outcome(sel).values()] == [
        "relative_margin",
        "relative_margin",
        "relative_margin",
        "selected",
        "selected",
    ]


def test_relative_margin_with_a_negative_positive_score_stays_below_it():
    # bound -0.5 * (1 + 0.1) = -0.55: a score between -0.55 and -0.5 is too close to the positive
    rows = [
        {"anchor_idx": 0, "doc_idx": i, "rank": i, "score": s, "positive_score": -0.5}
        for i, s in enumerate([-0.3, -0.46, -0.52, -0.54, -0.56, -0.7])
    ]
    sel = select(candidates(rows), num_negatives=10, relative_margin=0.1)
    assert [r for r, _ in outcome(sel).values()] == [
        "relative_margin",
        "relative_margin",
        "relative_margin",
        "relative_margin",
        "selected",
        "selected",
    ]


def test_relative_bound_is_below_the_positive_score_for_either_sign():
    pos = np.array([0.9, 0.5, 0.0, -0.2, -0.8], np.float32)
    bound = relative_bound(pos, 0.1)
    np.testing.assert_allclose(bound, [0.81, 0.45, 0.0, -0.22, -0.88], atol=1e-6)
    assert np.all(bound[pos != 0] < pos[pos != 0])
    assert np.all(relative_bound(pos, 0.0) == pos)


def test_top_picks_the_lowest_ranks():
    sel = select(candidates(ladder(0, 10)), num_negatives=3)
    result = outcome(sel)
    assert chosen(sel) == [1, 2, 3]
    assert [result[(0, r)] for r in (1, 2, 3)] == [
        ("selected", 1),
        ("selected", 2),
        ("selected", 3),
    ]
    assert [result[(0, r)][0] for r in range(4, 10)] == ["surplus"] * 6


def test_top_ignores_row_order():
    table = candidates(ladder(0, 10) + ladder(1, 10, positives=(2,)))
    shuffled = table.take(np.random.default_rng(3).permutation(table.num_rows))
    assert outcome(select(table, num_negatives=3)) == outcome(select(shuffled, num_negatives=3))


def many_candidates() -> pa.Table:
    return candidates([row for a in range(4) for row in ladder(a, 60, step=0.01)])


def test_random_is_deterministic_for_the_same_seed():
    table = many_candidates()
    first = select(table, num_negatives=5, sampling_strategy="random", seed=7)
    second = select(table, num_negatives=5, sampling_strategy="random", seed=7)
    assert first.candidates.equals(second.candidates)
    assert first.reason_counts == second.reason_counts


def test_random_is_independent_of_row_order():
    table = many_candidates()
    shuffled = table.take(np.random.default_rng(5).permutation(table.num_rows))
    ordered = select(table, num_negatives=5, sampling_strategy="random", seed=7)
    reordered = select(shuffled, num_negatives=5, sampling_strategy="random", seed=7)
    assert outcome(ordered) == outcome(reordered)


def test_random_changes_with_the_seed_and_differs_from_top():
    table = many_candidates()
    picks = {
        seed: [chosen(select(table, num_negatives=5, sampling_strategy="random", seed=seed), a) for a in range(4)]
        for seed in (1, 2)
    }
    assert picks[1] != picks[2]
    top = [chosen(select(table, num_negatives=5), a) for a in range(4)]
    assert picks[1] != top
    for per_anchor in picks[1]:
        assert len(per_anchor) == 5 and 0 not in per_anchor


def test_random_samples_only_eligible_candidates():
    table = many_candidates()
    for seed in range(5):
        sel = select(
            table,
            num_negatives=5,
            sampling_strategy="random",
            seed=seed,
            range_min=10,
            range_max=30,
        )
        for a in range(4):
            docs = chosen(sel, a)
            assert len(docs) == 5
            assert all(10 <= d < 30 for d in docs)


def test_pair_priority_is_elementwise_and_seeded():
    ah, dh = stable_hash64(["a", "b", "c"]), stable_hash64(["x", "y", "z"])
    perm = np.array([2, 0, 1])
    base = pair_priority(ah, dh, 4)
    assert base.dtype == np.uint64
    np.testing.assert_array_equal(pair_priority(ah[perm], dh[perm], 4), base[perm])
    np.testing.assert_array_equal(pair_priority(ah, dh, 4), base)
    assert not np.array_equal(pair_priority(ah, dh, 5), base)


def test_stable_hash64_is_blake2b_of_the_id():
    ids = ["doc-1", "doc-2", "ü"]
    got = stable_hash64(ids)
    assert got.dtype == np.uint64
    expected = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids]
    assert got.tolist() == expected
    assert len(set(got.tolist())) == 3


def test_the_first_reason_in_reasons_wins():
    # each anchor has one or two rows that trip several rules; the earliest rule must win
    opts = dict(
        num_negatives=1,
        range_min=2,
        range_max=8,
        min_score=0.3,
        max_score=0.9,
        absolute_margin=0.01,
        relative_margin=0.2,
    )
    flags = ("is_positive", "same_text_as_positive", "same_text_as_anchor")
    spec = [
        # (rank, score, positive_score, flags, expected reason)
        (0, 0.95, 0.5, flags, "positive"),
        (1, 0.95, 0.5, flags[1:], "same_text_as_positive"),
        (1, 0.95, 0.5, flags[2:], "same_text_as_anchor"),
        (1, 0.95, 0.5, (), "below_range_min"),
        (9, 0.95, 0.5, (), "above_range_max"),
        (3, 0.95, 0.5, (), "above_max_score"),
        (3, 0.2, 0.1, (), "below_min_score"),
        (3, 0.6, 0.6, (), "absolute_margin"),
        (3, 0.6, 0.7, (), "relative_margin"),
    ]
    rows = [
        {
            "anchor_idx": a,
            "doc_idx": a,
            "rank": rank,
            "score": s,
            "positive_score": p,
            **dict.fromkeys(f, True),
        }
        for a, (rank, s, p, f, _) in enumerate(spec)
    ]
    last = len(spec)
    rows += [
        {"anchor_idx": last, "doc_idx": last, "rank": 3, "score": 0.5, "positive_score": 0.7},
        {"anchor_idx": last, "doc_idx": last + 1, "rank": 4, "score": 0.45, "positive_score": 0.7},
    ]
    sel = select(candidates(rows), **opts)
    reasons = sel.candidates.column("reason").to_pylist()
    assert reasons == [*[want for *_, want in spec], "selected", "surplus"]
    # the drop reasons used here appear in REASONS order, each exactly once
    drops = reasons[:-2]
    assert sorted(drops, key=REASONS.index) == drops
    assert sel.reason_counts == dict.fromkeys([*drops, "selected", "surplus"], 1)
    assert sel.anchors_short == len(spec)


def test_anchors_short_counts_anchors_with_too_few_negatives():
    rows = (
        ladder(0, 6)  # 5 eligible
        + ladder(1, 3)  # 2 eligible
        + ladder(2, 1)  # only its positive
        + ladder(3, 4)  # exactly 3 eligible
    )
    sel = select(candidates(rows), num_negatives=3)
    assert sel.anchors_short == 2
    assert [len(chosen(sel, a)) for a in range(4)] == [3, 2, 0, 3]
    assert select(candidates(rows), num_negatives=2).anchors_short == 1
    assert select(candidates(rows), num_negatives=6).anchors_short == 4


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"range_min": 3, "range_max": 40},
        {"min_score": 0.5, "max_score": 0.9, "relative_margin": 0.05},
        {"absolute_margin": 0.2, "sampling_strategy": "random", "seed": 3},
    ],
)
def test_reason_counts_add_up_to_the_rows(options):
    table = many_candidates()
    sel = select(table, num_negatives=4, **options)
    assert sum(sel.reason_counts.values()) == table.num_rows
    assert set(sel.reason_counts) <= set(REASONS)
    column = sel.candidates.column("reason").to_pylist()
    for reason, count in sel.reason_counts.items():
        assert column.count(reason) == count
    slots = sel.candidates.column("negative_slot").drop_null()
    assert sel.reason_counts.get("selected", 0) == len(slots)


def test_slots_are_one_to_n_per_anchor():
    sel = select(many_candidates(), num_negatives=4, sampling_strategy="random", seed=11)
    t = sel.candidates.to_pydict()
    for a in range(4):
        slots = sorted(s for x, s in zip(t["anchor_idx"], t["negative_slot"], strict=True) if x == a and s)
        assert slots == [1, 2, 3, 4]


def test_selection_on_a_searched_multi_batch_table(tmp_path):
    # the search writes one row group per batch; selection must handle the chunked columns
    rng = np.random.default_rng(1)
    anchors = rng.normal(size=(5, 4)).astype(np.float32)
    docs = rng.normal(size=(30, 4)).astype(np.float32)
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    # each anchor's best document is its positive
    pair_anchor = np.arange(5, dtype=np.int32)
    pair_doc = np.argmax(anchors @ docs.T, axis=1).astype(np.int32)
    result = search_candidates(
        anchors,
        docs,
        tmp_path / "c.parquet",
        pair_anchor=pair_anchor,
        pair_doc=pair_doc,
        doc_text_keys=[text_key(f"d{i}") for i in range(30)],
        anchor_text_keys=[text_key(f"a{i}") for i in range(5)],
        search_depth=6,
        batch_size=1,
    )
    table = pq.read_table(result.path)
    sel = select_negatives(table, **hashes(5, 30), **(NAIVE | {"num_negatives": 3}))
    t = sel.candidates.to_pydict()
    for a in range(5):
        rows = [i for i, x in enumerate(t["anchor_idx"]) if x == a]
        picked = [t["rank"][i] for i in rows if t["negative_slot"][i] is not None]
        assert picked == [1, 2, 3]  # rank 0 is the positive
        assert t["reason"][rows[0]] == "positive"
