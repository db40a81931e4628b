"""What changed against the parent version, and the per-version summaries `negminer runs` prints."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer.storage import lineage
from negminer.storage.lineage import multiset_changes, quantile_drift, version_changes, version_summaries
from negminer.storage.versions import write_version


def tables(pairs: list[tuple[str, str]], triplets: list[tuple[str, str, str]], docs: list[str]) -> dict[str, pa.Table]:
    anchors = sorted({a for a, _ in pairs})
    return {
        "triplets": pa.table({k: [t[i] for t in triplets] for i, k in enumerate(("anchor", "positive", "negative"))}),
        "anchors": pa.table({"anchor_idx": list(range(len(anchors))), "anchor_id": anchors}),
        "docs": pa.table({"doc_idx": list(range(len(docs))), "doc_id": docs}),
        "pairs": pa.table(
            {"anchor_idx": [anchors.index(a) for a, _ in pairs], "doc_idx": [docs.index(d) for _, d in pairs]}
        ),
    }


def files(folder: Path, tables: dict[str, pa.Table], *, row_group_size: int | None = None) -> dict[str, Path]:
    """The new version's tables written as Parquet files, by stem."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, table in tables.items():
        pq.write_table(table, folder / f"{stem}.parquet", row_group_size=row_group_size)
    return {stem: folder / f"{stem}.parquet" for stem in tables}


def test_changes_count_rows_added_removed_and_quantile_drift(tmp_path: Path) -> None:
    old = tables(
        [("q1", "d1"), ("q2", "d2")], [("a", "p", "n1"), ("a", "p", "n1"), ("b", "p", "n2")], ["d1", "d2", "d3"]
    )
    quantiles = {"score_quantiles": {"negative": {"q50": 0.5, "q95": 0.7}}}
    parent = write_version(tmp_path, "ds", tables=old, manifest=quantiles)
    new = tables(
        [("q1", "d1"), ("q3", "d4")], [("a", "p", "n1"), ("b", "p", "n2"), ("c", "p", "n3")], ["d1", "d2", "d3", "d4"]
    )

    quantiles = {"negative": {"q50": 0.55, "q99": 0.9}}
    changes = version_changes(parent, files=files(tmp_path / "new", new), score_quantiles=quantiles)

    assert changes["parent"] == "v0001"
    assert changes["triplets"] == {"added": 1, "removed": 1, "kept": 2}  # one duplicate row of the parent dropped
    assert changes["pairs"] == {"added": 1, "removed": 1, "kept": 1}
    assert changes["docs"] == {"added": 1, "removed": 0, "kept": 3}
    assert changes["score_quantiles_drift"] == {"negative": {"q50": 0.05}}


def test_first_version_has_no_changes() -> None:
    assert version_changes(None, files={}, score_quantiles={}) is None


def test_quantile_drift_skips_kinds_and_quantiles_missing_on_one_side() -> None:
    old = {"negative": {"q01": 0.1}, "candidate": {"q50": 0.3}}
    drift = quantile_drift(old, {"negative": {"q01": 0.25, "q50": 0.4}, "positive": {"q50": 1.0}})
    assert drift == {"negative": {"q01": 0.15}}


def test_summaries_list_versions_with_counts_and_latest(tmp_path: Path) -> None:
    t = tables([("q1", "d1")], [("a", "p", "n")], ["d1"])
    counts = {
        "pairs": 1,
        "triplet_rows": 1,
        "negatives": 1,
        "rejected_rows": 0,
        "embedding": {"anchors": {"embedded": 1}, "docs": {"embedded": 2}},
    }
    write_version(tmp_path, "ds", tables=t, manifest={"counts": counts})
    changes = {"triplets": {"added": 0, "removed": 0}}
    write_version(tmp_path, "ds", tables=t, manifest={"counts": counts, "changes": changes})

    summaries = version_summaries(tmp_path / "ds")

    assert [(s.version, s.parent, s.latest) for s in summaries] == [("v0001", None, False), ("v0002", "v0001", True)]
    assert summaries[0].embedded == 3 and summaries[0].added is None
    assert (summaries[1].pairs, summaries[1].triplet_rows, summaries[1].added) == (1, 1, 0)
    assert version_summaries(tmp_path / "missing") == []


def test_labeled_list_views_are_compared_row_by_row(tmp_path: Path) -> None:
    def view(labels):
        return pa.table({"anchor": ["a", "b"], "documents": [["p", "n1"], ["q", "n2"]], "labels": labels})

    parent = write_version(tmp_path, "ds", tables={"triplets": view([[1, 0], [1, 0]])}, manifest={})
    new = files(tmp_path / "new", {"triplets": view([[1, 0], [1, 1]])})
    changes = version_changes(parent, files=new, score_quantiles={})
    assert changes["triplets"] == {"added": 1, "removed": 1, "kept": 1}


def test_changes_are_counted_in_batches_over_row_groups_as_multisets(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lineage, "BATCH_ROWS", 2)
    old_rows = [("a", "p", "n1")] * 3 + [("b", "p", "n2")] * 2 + [("c", "p", None)]
    new_rows = [("a", "p", "n1")] * 2 + [("b", "p", "n2")] * 4 + [("d", "p", "n4")] + [("c", "p", None)]
    old_pairs = [("q1", "d1"), ("q1", "d1"), ("q2", "d2"), ("q3", "d1")]
    new_pairs = [("q1", "d1"), ("q2", "d2"), ("q2", "d2"), ("q2", "d3"), ("q4", "d2")]
    old_docs, new_docs = ["d1", "d2", "d3", "d1"], ["d2", "d1", "d3", "d1", "d1", "d5"]
    parent = write_version(tmp_path, "ds", tables=tables(old_pairs, old_rows, old_docs), manifest={})
    new = files(tmp_path / "new", tables(new_pairs, new_rows, new_docs), row_group_size=3)

    changes = version_changes(parent, files=new, score_quantiles={})

    def expected(old: list, new: list) -> dict[str, int]:
        old_counts, new_counts = Counter(old), Counter(new)
        return {
            "added": (new_counts - old_counts).total(),
            "removed": (old_counts - new_counts).total(),
            "kept": (old_counts & new_counts).total(),
        }

    assert changes["triplets"] == expected(old_rows, new_rows) == {"added": 3, "removed": 1, "kept": 5}
    assert changes["pairs"] == expected(old_pairs, new_pairs) == {"added": 3, "removed": 2, "kept": 2}
    assert changes["docs"] == expected(old_docs, new_docs) == {"added": 2, "removed": 0, "kept": 4}


@pytest.mark.parametrize(
    ("old", "new", "answer"),
    [
        ([], [], (0, 0, 0)),
        ([5, 5], [], (0, 2, 0)),
        ([], [7, 7, 7], (3, 0, 0)),
        ([1, 1, 2, 9], [9, 1, 3, 3], (2, 2, 2)),
        ([2**64 - 1, 0, 0], [0, 2**64 - 1, 2**64 - 1], (1, 1, 2)),
    ],
)
def test_multiset_changes_match_counters(old: list[int], new: list[int], answer: tuple[int, int, int]) -> None:
    changes = multiset_changes(np.array(old, np.uint64), np.array(new, np.uint64))
    assert (changes["added"], changes["removed"], changes["kept"]) == answer


def chosen(rows: list[tuple[str, str, int | None, str | None]], *, tiers: bool = True) -> pa.Table:
    """A candidate table: (anchor id, doc id, negative slot or None, difficulty)."""
    table = pa.table(
        {
            "anchor_id": [r[0] for r in rows],
            "doc_id": [r[1] for r in rows],
            "negative_slot": pa.array([r[2] for r in rows], pa.int32()),
        }
    )
    return table.append_column("difficulty", pa.array([r[3] for r in rows], pa.string())) if tiers else table


def test_negatives_moved_are_counted_by_id_and_tier(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lineage, "BATCH_ROWS", 2)  # batches split the chosen rows
    old = chosen(
        [("q1", "d1", 1, "hard"), ("q1", "d2", 2, "hard"), ("q1", "d3", None, "easy"), ("q2", "d1", 1, "medium")]
    )
    # q1/d1 kept and now easy, q1/d2 kept and still hard, q2/d1 removed; q2/d3 and q1/d3 (was a candidate only) added
    new = chosen([("q1", "d2", 1, "hard"), ("q1", "d1", 2, "easy"), ("q1", "d3", 3, "medium"), ("q2", "d3", 1, "hard")])
    pq.write_table(old, tmp_path / "old.parquet")
    pq.write_table(new, tmp_path / "new.parquet")
    moved = lineage.negative_changes(tmp_path / "old.parquet", tmp_path / "new.parquet")
    assert moved == {
        "added": 2,
        "removed": 1,
        "kept": 2,
        "by_difficulty": {
            "added": {"easy": 0, "medium": 1, "hard": 1},
            "removed": {"easy": 0, "medium": 1, "hard": 0},
            "kept": {
                "easy": {"easy": 0, "medium": 0, "hard": 0},
                "medium": {"easy": 0, "medium": 0, "hard": 0},
                "hard": {"easy": 1, "medium": 0, "hard": 1},
            },
        },
    }
    # a parent written before tiers existed: the moves by id only
    pq.write_table(chosen([("q1", "d1", 1, None)], tiers=False), tmp_path / "untiered.parquet")
    assert lineage.negative_changes(tmp_path / "untiered.parquet", tmp_path / "new.parquet") == {
        "added": 3,
        "removed": 0,
        "kept": 1,
    }
