"""Training views: triplet and n-tuple, exact column names, pair order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer.config import MineConfig
from negminer.mining.formats import fill_negative_grids, training_view

ANCHORS = pa.array(["query A", "query B", "query C"])
DOCS = pa.array([f"doc {i}" for i in range(10)])
# pairs in output order (deliberately not sorted by anchor)
PAIRS = pa.table(
    {
        "anchor_idx": pa.array([1, 0, 1, 2], pa.int32()),
        "doc_idx": pa.array([0, 2, 3, 1], pa.int32()),
    }
)
# anchor 0 -> docs 4, 5; anchor 1 -> doc 6 only (short); anchor 2 -> docs 8, 7
GRID = np.array([[4, 5], [6, -1], [8, 7]], np.int64)


def test_triplet_columns_are_exactly_anchor_positive_negative():
    view = training_view(PAIRS, ANCHORS, DOCS, GRID, output_format="triplet")
    assert view.column_names == ["anchor", "positive", "negative"]
    assert all(pa.types.is_string(f.type) for f in view.schema)


def test_triplet_rows_follow_pairs_then_slots():
    view = training_view(PAIRS, ANCHORS, DOCS, GRID, output_format="triplet")
    assert view.to_pylist() == [
        {"anchor": "query B", "positive": "doc 0", "negative": "doc 6"},
        {"anchor": "query A", "positive": "doc 2", "negative": "doc 4"},
        {"anchor": "query A", "positive": "doc 2", "negative": "doc 5"},
        {"anchor": "query B", "positive": "doc 3", "negative": "doc 6"},
        {"anchor": "query C", "positive": "doc 1", "negative": "doc 8"},
        {"anchor": "query C", "positive": "doc 1", "negative": "doc 7"},
    ]


def test_triplet_is_the_default_format_and_lives_in_the_config():
    assert MineConfig().output_format == "triplet"
    with pytest.raises(TypeError, match="output_format"):  # the view copies no default
        training_view(PAIRS, ANCHORS, DOCS, GRID)  # type: ignore[call-arg]


def test_n_tuple_columns_are_negative_1_to_n():
    view = training_view(PAIRS, ANCHORS, DOCS, GRID, output_format="n-tuple")
    assert view.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    assert all(pa.types.is_string(f.type) for f in view.schema)


def test_n_tuple_drops_short_anchors_and_keeps_pair_order():
    view = training_view(PAIRS, ANCHORS, DOCS, GRID, output_format="n-tuple")
    # both pairs of anchor 1 are left out: it has one negative of two
    assert view.to_pylist() == [
        {"anchor": "query A", "positive": "doc 2", "negative_1": "doc 4", "negative_2": "doc 5"},
        {"anchor": "query C", "positive": "doc 1", "negative_1": "doc 8", "negative_2": "doc 7"},
    ]


def test_n_tuple_with_more_negatives():
    grid = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 1, 2]], np.int64)
    view = training_view(PAIRS, ANCHORS, DOCS, grid, output_format="n-tuple")
    assert view.column_names == ["anchor", "positive", *[f"negative_{k}" for k in range(1, 5)]]
    assert view.num_rows == 4
    assert view.column("anchor").to_pylist() == ["query B", "query A", "query B", "query C"]
    assert view.slice(1, 1).to_pylist()[0] == {
        "anchor": "query A",
        "positive": "doc 2",
        "negative_1": "doc 1",
        "negative_2": "doc 2",
        "negative_3": "doc 3",
        "negative_4": "doc 4",
    }


def test_anchor_without_negatives_gives_no_triplets():
    grid = np.array([[-1, -1], [-1, -1], [3, -1]], np.int64)
    view = training_view(PAIRS, ANCHORS, DOCS, grid, output_format="triplet")
    assert view.to_pylist() == [{"anchor": "query C", "positive": "doc 1", "negative": "doc 3"}]
    assert training_view(PAIRS, ANCHORS, DOCS, grid, output_format="n-tuple").num_rows == 0


def test_negative_grids_place_docs_and_scores_by_slot():
    selected = pa.table(
        {
            "anchor_idx": pa.array([2, 0, 0, 2], pa.int32()),
            "doc_idx": pa.array([8, 5, 4, 7], pa.int32()),
            "score": pa.array([0.3, 0.2, 0.25, 0.1], pa.float32()),
            "negative_slot": pa.array([1, 2, 1, 2], pa.int16()),
        }
    )
    grid, scores = np.full((4, 2), -1, np.int64), np.full((4, 2), np.nan, np.float32)
    fill_negative_grids((grid, scores), selected.slice(0, 2))  # batch by batch, as selection fills them
    fill_negative_grids((grid, scores), selected.slice(2))
    assert grid.tolist() == [[4, 5], [-1, -1], [8, 7], [-1, -1]]
    np.testing.assert_allclose(scores, [[0.25, 0.2], [np.nan, np.nan], [0.3, 0.1], [np.nan, np.nan]])


@pytest.mark.parametrize("output_format", ["triplet", "n-tuple"])
def test_view_loads_with_datasets(tmp_path, output_format):
    datasets = pytest.importorskip("datasets")
    view = training_view(PAIRS, ANCHORS, DOCS, GRID, output_format=output_format)
    pq.write_table(view, tmp_path / "triplets.parquet")
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "triplets.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert ds.column_names == view.column_names
    assert ds.num_rows == view.num_rows
    assert ds[0] == view.to_pylist()[0]


def test_texts_are_combined_with_64_bit_offsets_and_views_keep_plain_strings():
    """A text column over 2 GiB cannot combine into one ``string`` array (32-bit offsets);
    ``text_array`` uses ``large_string``, and the views still write ``string`` columns."""
    from negminer.mining.formats import text_array

    docs = pa.chunked_array([pa.array(["d0", "d1"]), pa.array(["d2", "d3"])])
    assert text_array(docs).type == pa.large_string()
    pairs = pa.table({"pair_idx": [0], "anchor_idx": [0], "doc_idx": [3]})
    view = training_view(pairs, pa.chunked_array([pa.array(["a0"])]), docs, np.array([[1, 2]]), output_format="triplet")
    assert view.schema.types == [pa.string()] * 3
    assert view.to_pylist() == [
        {"anchor": "a0", "positive": "d3", "negative": "d1"},
        {"anchor": "a0", "positive": "d3", "negative": "d2"},
    ]
