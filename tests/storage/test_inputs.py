"""Tests for negminer.storage.inputs.prepare_inputs: anchors, the document pool, pairs, rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer.config import InputConfig
from negminer.errors import InputError
from negminer.storage.inputs import prepare_inputs
from negminer.storage.readers import REJECT_SCHEMA
from negminer.textkeys import text_key


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def hashed_id(text: str) -> str:
    return f"h:{text_key(text).hex()}"


def pair_view(prepared) -> list[tuple[str, str, int]]:
    """(anchor_id, doc_id, source_row) for every pair, in pair order."""
    anchor_ids = prepared.anchors.column("anchor_id").to_pylist()
    doc_ids = prepared.docs.column("doc_id").to_pylist()
    return [
        (anchor_ids[a], doc_ids[d], row)
        for a, d, row in zip(
            prepared.pairs.column("anchor_idx").to_pylist(),
            prepared.pairs.column("doc_idx").to_pylist(),
            prepared.pairs.column("source_row").to_pylist(),
            strict=True,
        )
    ]


def reject_view(prepared) -> list[tuple[str, int, str | None, str, str | None]]:
    return [
        (Path(r["source_file"]).name, r["source_row"], r["column"], r["reason"], r["value"])
        for r in prepared.rejects.to_pylist()
    ]


CORPUS_ROWS = [
    {"id": "d1", "title": "First", "text": "Alpha beta gamma."},
    {"id": "d2", "title": "Second", "text": "Delta epsilon."},
    {"id": "d3", "title": None, "text": "Zeta eta."},
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_parquet(tmp_path / "corpus.parquet", CORPUS_ROWS)


# --- the real sample ------------------------------------------------------------------------


def test_scifact_sample_prepares_without_rejects(sample_dir):
    prepared = prepare_inputs(sample_dir / "pairs.parquet", sample_dir / "corpus.parquet")

    source = pq.read_table(sample_dir / "pairs.parquet").to_pylist()
    # 200 distinct query ids, 800 corpus docs that hold every positive, one pair per qrel row.
    assert (prepared.anchors.num_rows, prepared.docs.num_rows, prepared.pairs.num_rows) == (
        200,
        800,
        225,
    )
    assert prepared.rejects.num_rows == 0
    assert prepared.counts == {"corpus_in": 800, "pairs_in": 225, "rejected_rows": 0}
    assert all(prepared.docs.column("from_corpus").to_pylist())
    assert pair_view(prepared) == [(row["anchor_id"], row["positive_id"], i) for i, row in enumerate(source, start=1)]


def test_table_schemas_follow_the_contract(corpus, tmp_path):
    pairs = write_parquet(tmp_path / "pairs.parquet", [{"anchor": "Query one.", "positive": "Delta epsilon."}])

    prepared = prepare_inputs(pairs, corpus)

    key = pa.binary(16)
    assert prepared.anchors.schema == pa.schema(
        [
            ("anchor_idx", pa.int32()),
            ("anchor_id", pa.string()),
            ("text", pa.string()),
            ("text_key", key),
        ]
    )
    assert prepared.docs.schema == pa.schema(
        [
            ("doc_idx", pa.int32()),
            ("doc_id", pa.string()),
            ("text", pa.string()),
            ("title", pa.string()),
            ("text_key", key),
            ("from_corpus", pa.bool_()),
        ]
    )
    assert prepared.pairs.schema == pa.schema(
        [
            ("pair_idx", pa.int32()),
            ("anchor_idx", pa.int32()),
            ("doc_idx", pa.int32()),
            ("source_row", pa.int64()),
        ]
    )
    assert prepared.rejects.schema == REJECT_SCHEMA
    assert prepared.docs.column("doc_idx").to_pylist() == [0, 1, 2]
    assert prepared.docs.column("title").to_pylist() == ["First", "Second", None]
    assert prepared.docs.column("text_key").to_pylist() == [text_key(r["text"]) for r in CORPUS_ROWS]


def test_same_inputs_give_equal_tables(corpus, tmp_path):
    pairs = write_parquet(
        tmp_path / "pairs.parquet",
        [
            {"anchor": "Query one.", "positive": "New doc."},
            {"anchor": "Query two.", "positive": "Zeta eta."},
        ],
    )

    first, second = prepare_inputs(pairs, corpus), prepare_inputs(pairs, corpus)

    for name in ("anchors", "docs", "pairs", "rejects"):
        assert getattr(first, name).equals(getattr(second, name))


# --- several positives per anchor -----------------------------------------------------------


def test_sample_anchor_with_two_positives_is_one_anchor(tmp_path, sample_dir):
    sample = pq.read_table(sample_dir / "pairs.parquet").to_pylist()
    # Query 85 has two relevant abstracts, query 0 one (see the sample's README).
    rows = [{"anchor": r["anchor"], "positive": r["positive"]} for r in sample if r["anchor_id"] in ("0", "85")]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)

    prepared = prepare_inputs(pairs)

    assert prepared.anchors.num_rows == 2
    assert prepared.pairs.column("anchor_idx").to_pylist() == [0, 1, 1]
    assert prepared.pairs.column("doc_idx").to_pylist() == [0, 1, 2]
    assert prepared.anchors.column("anchor_id").to_pylist() == [
        hashed_id(rows[0]["anchor"]),
        hashed_id(rows[1]["anchor"]),
    ]


def test_same_anchor_text_up_to_case_and_whitespace_is_one_anchor(tmp_path):
    pairs = write_parquet(
        tmp_path / "pairs.parquet",
        [
            {"anchor": "What causes X?", "positive": "Doc A."},  # 1
            {"anchor": "  what causes\tx? ", "positive": "Doc B."},  # 2 same anchor
            {"anchor": "Another question?", "positive": "doc  a."},  # 3 same doc as row 1
            {"anchor": "WHAT CAUSES X?", "positive": "DOC A."},  # 4 duplicate of row 1
        ],
    )

    prepared = prepare_inputs(pairs)

    assert prepared.anchors.column("text").to_pylist() == ["What causes X?", "Another question?"]
    assert prepared.anchors.column("anchor_id").to_pylist() == [
        hashed_id("What causes X?"),
        hashed_id("Another question?"),
    ]
    assert prepared.docs.column("text").to_pylist() == ["Doc A.", "Doc B."]
    assert prepared.docs.column("from_corpus").to_pylist() == [False, False]
    assert pair_view(prepared) == [
        (hashed_id("What causes X?"), hashed_id("Doc A."), 1),
        (hashed_id("What causes X?"), hashed_id("Doc B."), 2),
        (hashed_id("Another question?"), hashed_id("Doc A."), 3),
    ]
    assert prepared.counts["duplicate_pairs"] == 1
    assert prepared.counts["pairs_in"] == 4
    assert prepared.rejects.num_rows == 0


def test_same_anchor_id_groups_positives(tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"anchor_id": "q1", "anchor": "Claim.", "positive_id": "p1", "positive": "Doc one."},
            {"anchor_id": "q1", "anchor": "Claim.", "positive_id": "p2", "positive": "Doc two."},
            {
                "anchor_id": "q2",
                "anchor": "Other claim.",
                "positive_id": "p1",
                "positive": "Doc one.",
            },
        ],
    )

    prepared = prepare_inputs(pairs)

    assert prepared.anchors.column("anchor_id").to_pylist() == ["q1", "q2"]
    assert pair_view(prepared) == [("q1", "p1", 1), ("q1", "p2", 2), ("q2", "p1", 3)]


# --- positives resolved to corpus documents -------------------------------------------------


def test_positive_resolves_to_corpus_doc_by_id(corpus, tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"anchor": "Query one.", "positive_id": "d2", "positive": "  DELTA   epsilon. "},
            {"anchor": "Query two.", "positive_id": "d9", "positive": "Brand new doc."},
        ],
    )

    prepared = prepare_inputs(pairs, corpus)

    assert prepared.docs.column("doc_id").to_pylist() == ["d1", "d2", "d3", "d9"]
    assert prepared.docs.column("from_corpus").to_pylist() == [True, True, True, False]
    assert prepared.docs.column("text").to_pylist()[1] == "Delta epsilon."  # the corpus text wins
    assert prepared.docs.column("title").to_pylist()[3] is None
    assert prepared.pairs.column("doc_idx").to_pylist() == [1, 3]


def test_positive_resolves_to_corpus_doc_by_normalized_text(corpus, tmp_path):
    pairs = write_parquet(
        tmp_path / "pairs.parquet",
        [
            {"anchor": "Query one.", "positive": "alpha BETA\tgamma."},
            {"anchor": "Query two.", "positive": "\u00a0Zeta  ETA.\n"},
            {"anchor": "Query three.", "positive": "Theta."},
        ],
    )

    prepared = prepare_inputs(pairs, corpus)

    assert prepared.pairs.column("doc_idx").to_pylist() == [0, 2, 3]
    assert prepared.docs.column("doc_id").to_pylist() == ["d1", "d2", "d3", hashed_id("Theta.")]
    assert prepared.docs.column("from_corpus").to_pylist() == [True, True, True, False]


def test_corpus_without_ids_gets_hashed_ids(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "Alpha."}, {"text": "Beta."}])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "Query.", "positive": "ALPHA."}])

    prepared = prepare_inputs(pairs, corpus)

    assert prepared.docs.column("doc_id").to_pylist() == [hashed_id("Alpha."), hashed_id("Beta.")]
    assert prepared.pairs.column("doc_idx").to_pylist() == [0]


def test_positive_with_unknown_id_resolves_to_corpus_doc_by_text(corpus, tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"anchor": "Query one.", "positive_id": "x7", "positive": "ALPHA beta  gamma."}],
    )

    prepared = prepare_inputs(pairs, corpus)

    assert prepared.pairs.column("doc_idx").to_pylist() == [0]
    assert prepared.docs.num_rows == 3


# --- column overrides -----------------------------------------------------------------------

OVERRIDES = InputConfig(
    anchor_column="query",
    positive_column="document",
    anchor_id_column="qid",
    positive_id_column="did",
    text_column="body",
    id_column="doc_key",
    title_column="heading",
)


def test_input_config_overrides_column_names(tmp_path):
    corpus = write_parquet(
        tmp_path / "corpus.parquet",
        [
            {"doc_key": "d1", "heading": "H1", "body": "Alpha."},
            {"doc_key": "d2", "heading": "H2", "body": "Beta."},
        ],
    )
    pairs = write_parquet(
        tmp_path / "pairs.parquet",
        [
            {"qid": "q1", "query": "Query one.", "did": "d2", "document": "Beta."},
            {"qid": "q2", "query": "Same text.", "did": "d3", "document": "same   TEXT."},
            {"qid": "q3", "query": "Query three.", "did": "d1", "document": "Alpha."},
        ],
    )

    prepared = prepare_inputs(pairs, corpus, config=OVERRIDES)

    assert pair_view(prepared) == [("q1", "d2", 1), ("q3", "d1", 3)]
    assert prepared.docs.column("title").to_pylist() == ["H1", "H2"]
    assert reject_view(prepared) == [("pairs.parquet", 2, "document", "anchor_equals_positive", "Same text.")]


def test_default_config_on_renamed_corpus_names_the_missing_column(tmp_path):
    corpus = write_parquet(tmp_path / "corpus.parquet", [{"doc_key": "d1", "body": "Alpha."}])
    pairs = write_parquet(tmp_path / "pairs.parquet", [{"anchor": "Query.", "positive": "Alpha."}])

    with pytest.raises(InputError, match="missing required column") as err:
        prepare_inputs(pairs, corpus)

    assert (err.value.path, err.value.column) == (str(corpus), "text")


# --- row-level problems ---------------------------------------------------------------------


def test_anchor_equal_to_positive_is_quarantined(tmp_path):
    pairs = write_parquet(
        tmp_path / "pairs.parquet",
        [
            {"anchor": "Same text.", "positive": "  same TEXT. "},  # 1
            {"anchor": "Query two.", "positive": "Doc two."},  # 2
        ],
    )

    prepared = prepare_inputs(pairs)

    assert pair_view(prepared) == [(hashed_id("Query two."), hashed_id("Doc two."), 2)]
    assert reject_view(prepared) == [("pairs.parquet", 1, "positive", "anchor_equals_positive", "Same text.")]
    assert prepared.counts == {"pairs_in": 2, "rejected_rows": 1}


def test_nulls_and_blank_texts_in_pairs_and_corpus_are_quarantined(tmp_path):
    corpus = write_parquet(
        tmp_path / "corpus.parquet",
        [{"id": "d1", "text": "Alpha."}, {"id": "d2", "text": None}, {"id": "d3", "text": " \n "}],
    )
    pairs = write_parquet(
        tmp_path / "pairs.parquet",
        [
            {"anchor": "Query one.", "positive": "Alpha."},  # 1
            {"anchor": None, "positive": "Beta."},  # 2
            {"anchor": "Query three.", "positive": "\t"},  # 3
        ],
    )

    prepared = prepare_inputs(pairs, corpus)

    assert pair_view(prepared) == [(hashed_id("Query one."), "d1", 1)]
    assert prepared.docs.column("doc_id").to_pylist() == ["d1"]
    assert sorted(reject_view(prepared)) == [
        ("corpus.parquet", 2, "text", "null_value", None),
        ("corpus.parquet", 3, "text", "empty_text", " \n "),
        ("pairs.parquet", 2, "anchor", "null_value", None),
        ("pairs.parquet", 3, "positive", "empty_text", "\t"),
    ]
    assert prepared.counts == {"corpus_in": 3, "pairs_in": 3, "rejected_rows": 4}


def test_fail_mode_raises_on_blank_text_naming_file_row_and_column(tmp_path):
    pairs = write_parquet(
        tmp_path / "pairs.parquet",
        [{"query": "Query one.", "document": "Doc."}, {"query": "  ", "document": "Doc two."}],
    )

    with pytest.raises(InputError, match="empty text") as err:
        prepare_inputs(pairs, config=OVERRIDES.model_copy(update={"on_bad_rows": "fail"}))

    assert (err.value.path, err.value.row, err.value.column) == (str(pairs), 2, "query")
    assert f"{pairs}, row 2, column 'query'" in str(err.value)


def test_conflicting_anchor_id_is_quarantined(tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"anchor_id": "q1", "anchor": "First claim.", "positive": "P1."},  # 1
            {"anchor_id": "q1", "anchor": "first   CLAIM.", "positive": "P2."},  # 2 same text: fine
            {"anchor_id": "q1", "anchor": "A different claim.", "positive": "P3."},  # 3 conflict
            {"anchor_id": "q2", "anchor": "A different claim.", "positive": "P3."},  # 4
        ],
    )

    prepared = prepare_inputs(pairs)

    assert prepared.anchors.column("anchor_id").to_pylist() == ["q1", "q2"]
    assert prepared.anchors.column("text").to_pylist() == ["First claim.", "A different claim."]
    assert pair_view(prepared) == [
        ("q1", hashed_id("P1."), 1),
        ("q1", hashed_id("P2."), 2),
        ("q2", hashed_id("P3."), 4),
    ]
    assert reject_view(prepared) == [("pairs.jsonl", 3, "anchor_id", "conflicting_id", "q1")]


def test_conflicting_positive_id_is_quarantined(corpus, tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {
                "anchor": "Query one.",
                "positive_id": "d1",
                "positive": "Not alpha at all.",
            },  # 1 vs corpus
            {
                "anchor": "Query two.",
                "positive_id": "d1",
                "positive": "ALPHA beta gamma.",
            },  # 2 fine
            {"anchor": "Query three.", "positive_id": "p1", "positive": "Doc one."},  # 3 new doc
            {"anchor": "Query four.", "positive_id": "p1", "positive": "Doc two."},  # 4 vs row 3
        ],
    )

    prepared = prepare_inputs(pairs, corpus)

    assert pair_view(prepared) == [
        (hashed_id("Query two."), "d1", 2),
        (hashed_id("Query three."), "p1", 3),
    ]
    assert reject_view(prepared) == [
        ("pairs.jsonl", 1, "positive_id", "conflicting_id", "d1"),
        ("pairs.jsonl", 4, "positive_id", "conflicting_id", "p1"),
    ]
    assert prepared.docs.column("doc_id").to_pylist() == ["d1", "d2", "d3", "p1"]


def test_row_quarantined_for_its_positive_adds_no_anchor(corpus, tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"anchor": "Query one.", "positive_id": "d1", "positive": "Not alpha at all."},
            {"anchor": "Query two.", "positive_id": "d2", "positive": "Delta epsilon."},
        ],
    )

    prepared = prepare_inputs(pairs, corpus)

    assert prepared.anchors.column("text").to_pylist() == ["Query two."]
    assert sorted(set(prepared.pairs.column("anchor_idx").to_pylist())) == list(range(prepared.anchors.num_rows))


def test_conflicting_corpus_id_is_quarantined_and_duplicates_counted(tmp_path):
    corpus = write_parquet(
        tmp_path / "corpus.parquet",
        [
            {"id": "d1", "text": "Alpha."},  # 1
            {"id": "d2", "text": "Beta."},  # 2
            {"id": "d1", "text": "Gamma."},  # 3 conflict
            {"id": "d2", "text": " BETA. "},  # 4 same document again
        ],
    )
    pairs = write_parquet(tmp_path / "pairs.parquet", [{"anchor": "Query.", "positive": "Gamma."}])

    prepared = prepare_inputs(pairs, corpus)

    assert prepared.docs.column("doc_id").to_pylist() == ["d1", "d2", hashed_id("Gamma.")]
    assert prepared.docs.column("from_corpus").to_pylist() == [True, True, False]
    assert reject_view(prepared) == [("corpus.parquet", 3, "id", "conflicting_id", "d1")]
    assert prepared.counts == {
        "corpus_in": 4,
        "corpus_duplicate_rows": 1,
        "pairs_in": 1,
        "rejected_rows": 1,
    }


def test_fail_mode_raises_on_conflicting_corpus_id(tmp_path):
    corpus = write_parquet(
        tmp_path / "corpus.parquet",
        [{"doc_key": "d1", "body": "Alpha."}, {"doc_key": "d1", "body": "Gamma."}],
    )
    pairs = write_parquet(tmp_path / "pairs.parquet", [{"query": "Query.", "document": "Alpha."}])

    with pytest.raises(InputError, match="conflicting id") as err:
        prepare_inputs(pairs, corpus, config=OVERRIDES.model_copy(update={"on_bad_rows": "fail"}))

    assert (err.value.path, err.value.row, err.value.column) == (str(corpus), 2, "doc_key")


def test_fail_mode_raises_on_conflicting_anchor_id(tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"anchor_id": "q1", "anchor": "Claim one.", "positive": "P1."},
            {"anchor_id": "q1", "anchor": "Claim two.", "positive": "P2."},
        ],
    )

    with pytest.raises(InputError, match="conflicting id") as err:
        prepare_inputs(pairs, config=InputConfig(on_bad_rows="fail"))

    assert (err.value.path, err.value.row, err.value.column) == (str(pairs), 2, "anchor_id")


def test_fail_mode_raises_on_anchor_equal_to_positive(tmp_path):
    pairs = write_parquet(tmp_path / "pairs.parquet", [{"anchor": "Same.", "positive": "SAME."}])

    with pytest.raises(InputError, match="anchor equals positive") as err:
        prepare_inputs(pairs, config=InputConfig(on_bad_rows="fail"))

    assert (err.value.row, err.value.column) == (1, "positive")


def test_format_rejects_from_jsonl_and_csv_reach_prepared_rejects(tmp_path):
    corpus = tmp_path / "corpus.csv"
    corpus.write_bytes(b"id,text\nd1,Alpha.\nd2,caf\xe9\nd3,Gamma.,extra\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b'{"anchor": "Q1.", "positive": "Alpha."}\nnot json\n{"anchor": "Q3.", "positive": "New."}\n')

    prepared = prepare_inputs(pairs, corpus)

    assert pair_view(prepared) == [
        (hashed_id("Q1."), "d1", 1),
        (hashed_id("Q3."), hashed_id("New."), 3),
    ]
    assert [(f, row, reason) for f, row, _, reason, _ in reject_view(prepared)] == [
        ("corpus.csv", 2, "invalid_utf8"),
        ("corpus.csv", 3, "wrong_field_count"),
        ("pairs.jsonl", 2, "invalid_json"),
    ]
    assert prepared.counts["corpus_in"] == 3
    assert prepared.counts["pairs_in"] == 3


def test_pairs_in_counts_each_input_row_once(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"anchor": "Q1.", "positive": "P1."}\n'
        '{"anchor": 2, "positive": "P2."}\n'
        '{"anchor": "Q3.", "positive": "P3."}\n',
        encoding="utf-8",
    )

    prepared = prepare_inputs(pairs)

    assert prepared.counts["pairs_in"] == 3
    assert prepared.counts["rejected_rows"] == 1


# --- empty and all-bad inputs ---------------------------------------------------------------


def test_empty_jsonl_corpus_raises(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"")
    pairs = write_parquet(tmp_path / "pairs.parquet", [{"anchor": "Query.", "positive": "Doc."}])

    with pytest.raises(InputError) as err:
        prepare_inputs(pairs, corpus)

    assert err.value.path == str(corpus)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_empty_corpus_raises_input_error(tmp_path, fmt):
    if fmt == "parquet":
        corpus = tmp_path / "corpus.parquet"
        pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), corpus)
    else:
        corpus = tmp_path / "corpus.csv"
        corpus.write_text("id,text\n", encoding="utf-8")
    pairs = write_parquet(tmp_path / "pairs.parquet", [{"anchor": "Query.", "positive": "Doc."}])

    with pytest.raises(InputError, match="corpus is empty") as err:
        prepare_inputs(pairs, corpus)

    assert err.value.path == str(corpus)


def test_corpus_with_only_bad_rows_leaves_the_positives(tmp_path):
    corpus = write_parquet(tmp_path / "corpus.parquet", [{"text": ""}, {"text": "   "}])
    pairs = write_parquet(tmp_path / "pairs.parquet", [{"anchor": "Query.", "positive": "Doc."}])

    prepared = prepare_inputs(pairs, corpus)

    assert prepared.docs.column("doc_id").to_pylist() == [hashed_id("Doc.")]
    assert [(f, row, reason) for f, row, _, reason, _ in reject_view(prepared)] == [
        ("corpus.parquet", 1, "empty_text"),
        ("corpus.parquet", 2, "empty_text"),
    ]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_all_pairs_bad_raises(tmp_path, fmt):
    rows = [
        {"anchor": "", "positive": "Doc one."},
        {"anchor": "Query two.", "positive": " "},
        {"anchor": "Same.", "positive": "same."},
    ]
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "parquet":
        write_parquet(path, rows)
    elif fmt == "jsonl":
        write_jsonl(path, rows)
    else:
        path.write_text("anchor,positive\n" + "".join(f"{r['anchor']},{r['positive']}\n" for r in rows))

    with pytest.raises(InputError, match="no valid") as err:
        prepare_inputs(path)

    assert err.value.path == str(path)


def test_missing_pairs_file_raises(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        prepare_inputs(tmp_path / "missing.parquet")


# --- more of the bad-input catalogue --------------------------------------------------------


def test_unreadable_pairs_file_raises_naming_it(tmp_path, monkeypatch):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "Query.", "positive": "Doc."}])
    real_open = Path.open

    def fake_open(self, *args, **kwargs):
        if self == pairs:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", fake_open)

    with pytest.raises(InputError, match="Permission denied") as err:
        prepare_inputs(pairs)

    assert err.value.path == str(pairs)


def test_corrupt_corpus_raises_naming_it(tmp_path):
    corpus = tmp_path / "corpus.parquet"
    corpus.write_bytes(b"PAR1" + bytes(range(256)) + b"PAR1")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "Query.", "positive": "Doc."}])

    with pytest.raises(InputError, match="not a readable Parquet file") as err:
        prepare_inputs(pairs, corpus)

    assert err.value.path == str(corpus)


def test_wrong_column_type_in_pairs_raises(tmp_path):
    pairs = write_parquet(tmp_path / "pairs.parquet", [{"anchor": "Query.", "positive": 7}])

    with pytest.raises(InputError, match="must hold strings") as err:
        prepare_inputs(pairs)

    assert (err.value.path, err.value.column) == (str(pairs), "positive")


def test_empty_jsonl_pairs_say_no_valid_rows(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b"\n")

    with pytest.raises(InputError, match="no valid rows") as err:
        prepare_inputs(pairs)

    assert err.value.path == str(pairs)


def test_fail_mode_raises_on_the_first_bad_row_of_any_kind(tmp_path):
    pairs = write_parquet(
        tmp_path / "pairs.parquet",
        [
            {"anchor": "Same.", "positive": "same."},  # 1: found while indexing
            {"anchor": "", "positive": "Doc."},  # 2: found by the reader
        ],
    )

    with pytest.raises(InputError, match="anchor equals positive") as err:
        prepare_inputs(pairs, config=InputConfig(on_bad_rows="fail"))

    assert (err.value.row, err.value.column) == (1, "positive")


def test_fail_mode_raises_on_a_reader_reject_before_a_later_conflict(tmp_path):
    pairs = write_parquet(
        tmp_path / "pairs.parquet",
        [{"anchor": "Query.", "positive": None}, {"anchor": "Same.", "positive": "same."}],
    )

    with pytest.raises(InputError, match="null value") as err:
        prepare_inputs(pairs, config=InputConfig(on_bad_rows="fail"))

    assert (err.value.row, err.value.column) == (1, "positive")


def test_fail_mode_raises_on_a_conflicting_positive_id(tmp_path, corpus):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"anchor": "Query.", "positive_id": "d1", "positive": "Not alpha."}],
    )

    with pytest.raises(InputError, match="conflicting id") as err:
        prepare_inputs(pairs, corpus, config=InputConfig(on_bad_rows="fail"))

    assert (err.value.path, err.value.row, err.value.column) == (str(pairs), 1, "positive_id")


def test_rejects_are_ordered_by_file_then_row(tmp_path, corpus):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"anchor": "Same.", "positive": "SAME."},  # 1 conflict found while indexing
            {"anchor": "", "positive": "Doc."},  # 2 reader reject
            {"anchor": "Query three.", "positive_id": "d1", "positive": "Other."},  # 3 conflict
            {"anchor": "Query four.", "positive": "Doc four."},  # 4 kept
        ],
    )

    prepared = prepare_inputs(pairs, corpus)

    assert [(f, row, reason) for f, row, _, reason, _ in reject_view(prepared)] == [
        ("pairs.jsonl", 1, "anchor_equals_positive"),
        ("pairs.jsonl", 2, "empty_text"),
        ("pairs.jsonl", 3, "conflicting_id"),
    ]


def write_pairs_folder(folder: Path) -> Path:
    """Two part files; the bad rows of part-1 are found by the index (row 1) and the reader (row 2)."""
    folder.mkdir()
    write_parquet(folder / "part-0.parquet", [{"anchor": "a1", "positive": "p1"}, {"anchor": "a2", "positive": "p2"}])
    write_parquet(folder / "part-1.parquet", [{"anchor": "same", "positive": "SAME"}, {"anchor": "a4", "positive": ""}])
    return folder


def test_rejects_of_a_folder_name_the_part_file_and_its_row(tmp_path):
    folder = write_pairs_folder(tmp_path / "pairs")

    prepared = prepare_inputs(folder)

    assert [(f, row, reason) for f, row, _, reason, _ in reject_view(prepared)] == [
        ("part-1.parquet", 1, "anchor_equals_positive"),
        ("part-1.parquet", 2, "empty_text"),
    ]
    assert prepared.rejects.column("source_file")[0].as_py() == str(folder / "part-1.parquet")


def test_fail_mode_on_a_folder_names_the_first_bad_row_of_its_part_file(tmp_path):
    folder = write_pairs_folder(tmp_path / "pairs")

    with pytest.raises(InputError, match="anchor equals positive") as err:
        prepare_inputs(folder, config=InputConfig(on_bad_rows="fail"))

    assert (err.value.path, err.value.row, err.value.column) == (str(folder / "part-1.parquet"), 1, "positive")


def test_rejects_of_a_folder_are_ordered_by_part_file_then_row(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    write_parquet(folder / "part-0.parquet", [{"anchor": "a1", "positive": "p1"}, {"anchor": "a2", "positive": ""}])
    part_1 = [{"anchor": "same", "positive": "SAME"}, {"anchor": "a4", "positive": "p4"}]
    write_parquet(folder / "part-1.parquet", part_1)

    prepared = prepare_inputs(folder)

    assert [(f, row, reason) for f, row, _, reason, _ in reject_view(prepared)] == [
        ("part-0.parquet", 2, "empty_text"),
        ("part-1.parquet", 1, "anchor_equals_positive"),
    ]


def test_corpus_conflicts_of_a_folder_name_the_part_file_and_its_row(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_parquet(corpus / "part-0.parquet", [{"id": "d1", "text": "Alpha."}, {"id": "d2", "text": "Beta."}])
    write_parquet(corpus / "part-1.parquet", [{"id": "d1", "text": "Gamma."}, {"id": "d3", "text": ""}])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "Query.", "positive": "Alpha."}])

    prepared = prepare_inputs(pairs, corpus)

    assert [(f, row, reason) for f, row, _, reason, _ in reject_view(prepared)] == [
        ("part-1.parquet", 1, "conflicting_id"),
        ("part-1.parquet", 2, "empty_text"),
    ]


def test_unknown_positive_id_matched_by_text_names_that_doc_from_then_on(corpus, tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"anchor": "Query one.", "positive_id": "x7", "positive": "Alpha beta gamma."},  # 1 -> d1
            {"anchor": "Query two.", "positive_id": "x7", "positive": "alpha BETA gamma."},  # 2 -> d1
            {"anchor": "Query three.", "positive_id": "x7", "positive": "Other text."},  # 3 conflict
        ],
    )

    prepared = prepare_inputs(pairs, corpus)

    assert pair_view(prepared) == [(hashed_id("Query one."), "d1", 1), (hashed_id("Query two."), "d1", 2)]
    assert reject_view(prepared) == [("pairs.jsonl", 3, "positive_id", "conflicting_id", "x7")]
    assert prepared.docs.num_rows == 3


def test_positive_with_new_id_and_text_of_an_earlier_positive_is_that_doc(tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"anchor": "Query one.", "positive_id": "p1", "positive": "Doc one."},
            {"anchor": "Query two.", "positive_id": "p2", "positive": "DOC ONE."},
        ],
    )

    prepared = prepare_inputs(pairs)

    assert prepared.docs.column("doc_id").to_pylist() == ["p1"]
    assert prepared.pairs.column("doc_idx").to_pylist() == [0, 0]


def test_row_quarantined_for_its_anchor_adds_no_positive(tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"anchor_id": "q1", "anchor": "Claim one.", "positive": "P1."},
            {"anchor_id": "q1", "anchor": "Claim two.", "positive": "P2."},  # conflict
        ],
    )

    prepared = prepare_inputs(pairs)

    assert prepared.docs.column("text").to_pylist() == ["P1."]


def test_invalid_utf8_in_parquet_pairs_is_quarantined(tmp_path):
    raw = pa.array([b"Query one.", b"Query \xff."], pa.binary())
    anchors = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": anchors, "positive": ["Doc one.", "Doc two."]}), pairs)

    prepared = prepare_inputs(pairs)

    assert pair_view(prepared) == [(hashed_id("Query one."), hashed_id("Doc one."), 1)]
    assert reject_view(prepared) == [("pairs.parquet", 2, "anchor", "invalid_utf8", "Query \\xff.")]
    assert prepared.counts == {"pairs_in": 2, "rejected_rows": 1}


def test_whitespace_only_corpus_text_is_quarantined_in_every_format(tmp_path):
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("id,text\nd1,Alpha.\nd2,  \n", encoding="utf-8")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "Query.", "positive": "Alpha."}])

    prepared = prepare_inputs(pairs, corpus)

    assert reject_view(prepared) == [("corpus.csv", 2, "text", "empty_text", "  ")]
    assert prepared.counts["corpus_in"] == 2


@pytest.mark.parametrize(
    ("one", "other"),
    [("\u0390", "\u03aa\u0301"), ("\u03b0", "\u03ab\u0301"), ("\u01f0\u0323", "J\u030c\u0323"), ("Straße", "STRASSE")],
)
def test_texts_equal_up_to_case_and_unicode_form_share_a_key(one, other):
    assert text_key(one) == text_key(other)


def test_a_quote_never_closed_is_rejected_not_silently_swallowing_the_rest(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('anchor,positive\na1,p1\na2,"p2 with a stray quote\na3,p3\na4,p4\n')
    prepared = prepare_inputs(path)
    assert prepared.pairs.num_rows == 1
    [reject] = prepared.rejects.to_pylist()
    assert (reject["source_row"], reject["reason"]) == (2, "unparseable_csv") and "never closed" in reject["value"]
    with pytest.raises(InputError, match=r"row 2.*never closed"):
        prepare_inputs(path, config=InputConfig(on_bad_rows="fail"))
    path.write_text('anchor,positive\na1,"p1\non two lines"\na2,p2\n')  # a closed multi-line field stays
    assert prepare_inputs(path).pairs.num_rows == 2
