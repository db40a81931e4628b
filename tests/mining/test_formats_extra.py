"""labeled-pair / labeled-list layouts and the scored view (sentence-transformers' layouts)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer.mining.formats import (
    OUTPUT_FORMATS,
    scored_view,
    training_view,
)

ANCHORS = pa.array(["query A", "query B", "query C", "query D"])
DOCS = pa.array([f"doc {i}" for i in range(10)])
# pairs in output order; anchor 1 has two positives; anchor 3 has no pairs
PAIRS = pa.table({"anchor_idx": pa.array([1, 0, 1, 2], pa.int32()), "doc_idx": pa.array([0, 2, 3, 1], pa.int32())})
# anchor 0 -> 4, 5; anchor 1 -> 6 only; anchor 2 -> none; anchor 3 -> 9 (no pairs: never shown)
GRID = np.array([[4, 5], [6, -1], [-1, -1], [9, -1]], np.int64)
PAIR_SCORES = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
NEG_SCORES = np.array([[0.5, 0.4], [0.3, np.nan], [np.nan, np.nan], [0.2, np.nan]], np.float32)


def test_labeled_pair_lists_each_anchor_positives_then_negatives():
    view = training_view(PAIRS, ANCHORS, DOCS, GRID, output_format="labeled-pair")
    assert view.column_names == ["anchor", "document", "label"]
    assert [tuple(r.values()) for r in view.to_pylist()] == [
        ("query B", "doc 0", 1),
        ("query B", "doc 3", 1),
        ("query B", "doc 6", 0),
        ("query A", "doc 2", 1),
        ("query A", "doc 4", 0),
        ("query A", "doc 5", 0),
        ("query C", "doc 1", 1),
    ]


def test_labeled_list_has_one_row_per_pair_with_negatives():
    view = training_view(PAIRS, ANCHORS, DOCS, GRID, output_format="labeled-list")
    assert view.column_names == ["anchor", "documents", "labels"]
    assert view.to_pylist() == [
        {"anchor": "query B", "documents": ["doc 0", "doc 6"], "labels": [1, 0]},
        {"anchor": "query A", "documents": ["doc 2", "doc 4", "doc 5"], "labels": [1, 0, 0]},
        {"anchor": "query B", "documents": ["doc 3", "doc 6"], "labels": [1, 0]},
    ]


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_scored_view_is_the_training_view_plus_aligned_scores(output_format):
    view = training_view(PAIRS, ANCHORS, DOCS, GRID, output_format=output_format)
    scored = scored_view(
        PAIRS, ANCHORS, DOCS, GRID, pair_scores=PAIR_SCORES, negative_scores=NEG_SCORES, output_format=output_format
    )
    name = "score" if output_format == "labeled-pair" else "scores"
    assert scored.column_names == [*view.column_names, name]
    assert scored.drop_columns([name]).equals(view)


def test_scores_follow_sentence_transformers_layouts():
    def scores(fmt: str) -> list:
        table = scored_view(
            PAIRS, ANCHORS, DOCS, GRID, pair_scores=PAIR_SCORES, negative_scores=NEG_SCORES, output_format=fmt
        )
        if fmt == "labeled-pair":
            return [round(v, 4) for v in table.column("score").to_pylist()]
        return [[round(v, 4) for v in row] for row in table.column("scores").to_pylist()]

    assert scores("triplet") == [[0.9, 0.3], [0.8, 0.5], [0.8, 0.4], [0.7, 0.3]]
    assert scores("labeled-list") == [[0.9, 0.3], [0.8, 0.5, 0.4], [0.7, 0.3]]
    assert scores("labeled-pair") == [0.9, 0.7, 0.3, 0.8, 0.5, 0.4, 0.6]
    full_grid = np.array([[4, 5], [6, 7], [8, 9], [-1, -1]], np.int64)
    full_scores = np.array([[0.5, 0.4], [0.3, 0.2], [0.1, 0.0], [np.nan, np.nan]], np.float32)
    n_tuple = scored_view(
        PAIRS, ANCHORS, DOCS, full_grid, pair_scores=PAIR_SCORES, negative_scores=full_scores, output_format="n-tuple"
    )
    assert [[round(v, 4) for v in row] for row in n_tuple.column("scores").to_pylist()] == [
        [0.9, 0.3, 0.2],
        [0.8, 0.5, 0.4],
        [0.7, 0.3, 0.2],
        [0.6, 0.1, 0.0],
    ]


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="output_format"):
        training_view(PAIRS, ANCHORS, DOCS, GRID, output_format="pairs")  # type: ignore[arg-type]


@pytest.mark.parametrize("output_format", ["labeled-pair", "labeled-list"])
def test_labeled_views_round_trip_through_parquet_and_datasets(tmp_path, output_format):
    datasets = pytest.importorskip("datasets")
    view = training_view(PAIRS, ANCHORS, DOCS, GRID, output_format=output_format)
    pq.write_table(view, tmp_path / "view.parquet")
    assert pq.read_table(tmp_path / "view.parquet").equals(view)
    ds = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "view.parquet"), split="train", cache_dir=str(tmp_path / "c")
    )
    assert ds.column_names == view.column_names and ds[0] == view.to_pylist()[0]
