"""Tests for negminer.storage.readers.read_table: formats, column mapping, quarantine."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer.errors import InputError
from negminer.storage.readers import REJECT_SCHEMA, read_table

PAIRS = {"anchor": "anchor", "positive": "positive"}
PAIR_IDS = {"anchor_id": "anchor_id", "positive_id": "positive_id"}
TEXTS = ("anchor", "positive")
FORMATS = ["parquet", "folder", "jsonl", "csv", "tsv"]


def write_rows(directory: Path, rows: list[dict], fmt: str, name: str = "pairs") -> Path:
    """Write `rows` (same keys in every row) as `fmt`; return the path to read."""
    columns = list(rows[0])
    if fmt == "parquet":
        path = directory / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "folder":
        path = directory / name
        path.mkdir()
        half = (len(rows) + 1) // 2
        pq.write_table(pa.Table.from_pylist(rows[:half]), path / "part-0.parquet")
        pq.write_table(pa.Table.from_pylist(rows[half:]), path / "part-1.parquet")
        (path / "_SUCCESS").write_text("")
    elif fmt == "jsonl":
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt in ("csv", "tsv"):
        path = directory / f"{name}.{fmt}"
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t" if fmt == "tsv" else ",")
            writer.writerow(columns)
            writer.writerows([[r[c] for c in columns] for r in rows])
    else:
        raise ValueError(fmt)
    return path


@pytest.fixture(scope="module")
def sample_rows(sample_dir) -> list[dict]:
    """The first five pairs of the SciFact sample: real abstracts with commas and quotes."""
    return pq.read_table(sample_dir / "pairs.parquet").slice(0, 5).to_pylist()


def rows_of(table: pa.Table) -> list[int]:
    return table.column("source_row").to_pylist()


def reject_keys(rejects: pa.Table) -> list[tuple[int, str | None, str]]:
    return sorted(
        zip(
            rejects.column("source_row").to_pylist(),
            rejects.column("column").to_pylist(),
            rejects.column("reason").to_pylist(),
            strict=True,
        ),
        key=lambda key: (key[0], key[1] or "", key[2]),
    )


# --- every format reads the same rows -------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_the_same_rows(tmp_path, sample_rows, fmt):
    path = write_rows(tmp_path, sample_rows, fmt)

    result = read_table(path, required=PAIRS, optional=PAIR_IDS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.column_names == [
        "anchor",
        "positive",
        "anchor_id",
        "positive_id",
        "source_row",
    ]
    assert all(pa.types.is_string(t) for t in result.table.schema.types[:4])
    assert result.table.schema.field("source_row").type == pa.int64()
    expected = [{**row, "source_row": i} for i, row in enumerate(sample_rows, start=1)]
    assert result.table.to_pylist() == expected
    assert result.rejects.num_rows == 0
    assert result.rejects.schema == REJECT_SCHEMA


@pytest.mark.parametrize("fmt", FORMATS)
def test_optional_columns_absent_from_the_file_are_left_out(tmp_path, fmt):
    rows = [{"positive": "p1", "anchor": "a1"}, {"positive": "p2", "anchor": "a2"}]
    path = write_rows(tmp_path, rows, fmt)

    result = read_table(path, required=PAIRS, optional=PAIR_IDS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.column_names == ["anchor", "positive", "source_row"]
    assert result.table.column("anchor").to_pylist() == ["a1", "a2"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_columns_are_renamed_to_canonical_names(tmp_path, fmt):
    rows = [{"qid": "q1", "question": "a1", "answer": "p1", "extra": "x"}]
    path = write_rows(tmp_path, rows, fmt)

    result = read_table(
        path,
        required={"anchor": "question", "positive": "answer"},
        optional={"anchor_id": "qid", "positive_id": "did"},
        text_columns=TEXTS,
        on_bad_rows="quarantine",
    )

    assert result.table.to_pylist() == [{"anchor": "a1", "positive": "p1", "anchor_id": "q1", "source_row": 1}]


def test_uppercase_suffixes_are_recognised(tmp_path):
    (tmp_path / "pairs.JSONL").write_text('{"anchor": "a", "positive": "p"}\n', encoding="utf-8")
    (tmp_path / "pairs.TSV").write_text("anchor\tpositive\na, b\tp, q\n", encoding="utf-8")

    assert read_table(tmp_path / "pairs.JSONL", required=PAIRS, on_bad_rows="quarantine").table.num_rows == 1
    tsv = read_table(tmp_path / "pairs.TSV", required=PAIRS, on_bad_rows="quarantine").table
    assert tsv.select(["anchor", "positive"]).to_pylist() == [{"anchor": "a, b", "positive": "p, q"}]


def test_folder_numbers_rows_across_files_in_name_order(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    pq.write_table(pa.table({"anchor": ["b1", "b2"], "positive": ["q1", "q2"]}), folder / "part-1.parquet")
    pq.write_table(pa.table({"anchor": ["a1"], "positive": ["p1"]}), folder / "part-0.parquet")

    table = read_table(folder, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine").table

    assert table.column("anchor").to_pylist() == ["a1", "b1", "b2"]
    assert rows_of(table) == [1, 2, 3]


def test_large_string_and_dictionary_columns_become_string(tmp_path):
    path = tmp_path / "pairs.parquet"
    table = pa.table(
        {
            "anchor": pa.array(["a1", "a2"], pa.large_string()),
            "positive": pa.array(["p1", "p1"]).dictionary_encode(),
        }
    )
    pq.write_table(table, path)

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine").table

    assert result.schema.field("anchor").type == pa.string()
    assert result.schema.field("positive").type == pa.string()
    assert result.column("positive").to_pylist() == ["p1", "p1"]


# --- file-level errors ----------------------------------------------------------------------


def test_missing_file_raises(tmp_path):
    path = tmp_path / "nope.parquet"

    with pytest.raises(InputError, match="file not found") as err:
        read_table(path, required=PAIRS, on_bad_rows="quarantine")

    assert err.value.path == str(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["pairs.txt", "pairs.xlsx", "pairs"])
def test_unknown_suffix_raises(tmp_path, name):
    path = tmp_path / name
    path.write_text("anchor,positive\na,p\n", encoding="utf-8")

    with pytest.raises(InputError, match="unknown file type") as err:
        read_table(path, required=PAIRS, on_bad_rows="quarantine")

    assert str(path) in str(err.value)


def test_folder_without_parquet_files_raises(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "pairs.csv").write_text("anchor,positive\na,p\n", encoding="utf-8")

    with pytest.raises(InputError, match=r"no \.parquet files"):
        read_table(folder, required=PAIRS, on_bad_rows="quarantine")


def corrupt_payload(kind: str, real: bytes) -> bytes:
    rng = random.Random(20240611)
    return {
        "random": lambda: rng.randbytes(4096),
        "empty": lambda: b"",
        "magic_around_random": lambda: b"PAR1" + rng.randbytes(4096) + b"PAR1",
        "truncated": lambda: real[: len(real) // 2],
        "text": lambda: b"anchor,positive\na,p\n",
    }[kind]()


@pytest.mark.parametrize("kind", ["random", "empty", "magic_around_random", "truncated", "text"])
def test_corrupt_parquet_raises_input_error(tmp_path, sample_dir, kind):
    path = tmp_path / "pairs.parquet"
    path.write_bytes(corrupt_payload(kind, (sample_dir / "pairs.parquet").read_bytes()))

    with pytest.raises(InputError, match="not a readable Parquet file") as err:
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert err.value.path == str(path)


def test_corrupt_parquet_in_folder_names_that_file(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    pq.write_table(pa.table({"anchor": ["a"], "positive": ["p"]}), folder / "part-0.parquet")
    bad = folder / "part-1.parquet"
    bad.write_bytes(random.Random(7).randbytes(512))

    with pytest.raises(InputError) as err:
        read_table(folder, required=PAIRS, on_bad_rows="quarantine")

    assert err.value.path == str(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_required_column_names_column_and_file(tmp_path, fmt):
    path = write_rows(tmp_path, [{"anchor": "a1", "answer": "p1"}], fmt)

    with pytest.raises(InputError, match="missing required column") as err:
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert err.value.column == "positive"
    assert err.value.path == str(path)
    assert "'positive'" in str(err.value)
    assert str(path) in str(err.value)


def test_missing_overridden_column_names_the_file_column(tmp_path):
    path = write_rows(tmp_path, [{"anchor": "a1", "positive": "p1"}], "parquet")

    with pytest.raises(InputError) as err:
        read_table(path, required={"anchor": "query", "positive": "positive"}, on_bad_rows="quarantine")

    assert err.value.column == "query"
    assert "'query'" in str(err.value)


def test_non_string_parquet_column_raises_naming_the_column(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": [1, 2], "positive": ["p1", "p2"]}), path)

    with pytest.raises(InputError, match="must hold strings") as err:
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert err.value.column == "anchor"


def test_csv_without_header_raises(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"")

    with pytest.raises(InputError, match="no header row"):
        read_table(path, required=PAIRS, on_bad_rows="quarantine")


def test_csv_header_with_invalid_utf8_raises(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"anch\xffor,positive\na,p\n")

    with pytest.raises(InputError, match="header is not valid UTF-8") as err:
        read_table(path, required=PAIRS, on_bad_rows="quarantine")

    assert err.value.row == 0


# --- row-level problems ---------------------------------------------------------------------

NULL_AND_BLANK_ROWS = [
    {"anchor": "a1", "positive": "p1"},  # 1 kept
    {"anchor": None, "positive": "p2"},  # 2 null anchor
    {"anchor": "a3", "positive": ""},  # 3 empty positive
    {"anchor": " \t\n ", "positive": "p4"},  # 4 whitespace-only anchor
    {"anchor": None, "positive": ""},  # 5 both bad: one reject, anchor is checked first
    {"anchor": "a6", "positive": "\u3000\u00a0"},  # 6 Unicode whitespace only
    {"anchor": " a7 ", "positive": "p7"},  # 7 kept, text unchanged
]


@pytest.mark.parametrize("fmt", ["parquet", "folder", "jsonl"])
def test_nulls_and_blank_texts_are_quarantined(tmp_path, fmt):
    path = write_rows(tmp_path, NULL_AND_BLANK_ROWS, fmt)

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 7]
    assert result.table.column("anchor").to_pylist() == ["a1", " a7 "]
    expected = [
        (2, "anchor", "null_value"),
        (3, "positive", "empty_text"),
        (4, "anchor", "empty_text"),
        (5, "anchor", "null_value"),
        (6, "positive", "empty_text"),
    ]
    if fmt == "folder":  # rows 1-4 are part-0's, 5-7 part-1's: rejects name the part file and its row
        files = [str(path / "part-0.parquet")] * 3 + [str(path / "part-1.parquet")] * 2
        assert result.rejects.column("source_file").to_pylist() == files
        rows_in_file = [2, 3, 4, 1, 2]
        assert reject_keys(result.rejects) == sorted(
            (row, *key[1:]) for row, key in zip(rows_in_file, expected, strict=True)
        )
    else:
        assert reject_keys(result.rejects) == expected
        assert set(result.rejects.column("source_file").to_pylist()) == {str(path)}


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_empty_fields_are_empty_text(tmp_path, fmt):
    # CSV has no null: None is written as an empty field, which is empty text.
    path = write_rows(tmp_path, NULL_AND_BLANK_ROWS, fmt)

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 7]
    assert reject_keys(result.rejects) == [
        (2, "anchor", "empty_text"),
        (3, "positive", "empty_text"),
        (4, "anchor", "empty_text"),
        (5, "anchor", "empty_text"),
        (6, "positive", "empty_text"),
    ]


def test_quarantine_records_the_value(tmp_path):
    path = write_rows(
        tmp_path,
        [{"anchor": "a1", "positive": "p1"}, {"anchor": "   ", "positive": "p2"}],
        "parquet",
    )

    rejects = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine").rejects

    assert rejects.to_pylist() == [
        {
            "source_file": str(path),
            "source_row": 2,
            "column": "anchor",
            "reason": "empty_text",
            "value": "   ",
        }
    ]


def test_only_text_columns_are_checked(tmp_path):
    rows = [
        {"anchor": "a1", "positive": "p1", "anchor_id": None},
        {"anchor": "a2", "positive": "p2", "anchor_id": ""},
    ]
    path = write_rows(tmp_path, rows, "jsonl")

    result = read_table(path, required=PAIRS, optional=PAIR_IDS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.column("anchor_id").to_pylist() == [None, ""]
    assert result.rejects.num_rows == 0


def test_column_override_is_named_in_rejects(tmp_path):
    path = write_rows(tmp_path, [{"question": "a1", "answer": ""}, {"question": "a2", "answer": "p2"}], "parquet")

    result = read_table(
        path, required={"anchor": "question", "positive": "answer"}, text_columns=TEXTS, on_bad_rows="quarantine"
    )

    assert reject_keys(result.rejects) == [(1, "answer", "empty_text")]


@pytest.mark.parametrize("fmt", ["parquet", "folder", "jsonl", "csv"])
def test_fail_mode_names_file_row_and_column(tmp_path, fmt):
    rows = [
        {"anchor": "a1", "positive": "p1"},
        {"anchor": "a2", "positive": "p2"},
        {"anchor": "a3", "positive": " "},
    ]
    path = write_rows(tmp_path, rows, fmt)

    with pytest.raises(InputError, match="empty text") as err:
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="fail")

    # a folder's rows 1-2 are in part-0, row 3 is part-1's first row
    where = (str(path / "part-1.parquet"), 1) if fmt == "folder" else (str(path), 3)
    assert (err.value.path, err.value.row, err.value.column) == (*where, "positive")
    assert where[0] in str(err.value)
    assert f"row {where[1]}" in str(err.value)
    assert "'positive'" in str(err.value)


def test_fail_mode_on_null_names_the_file_column(tmp_path):
    path = write_rows(
        tmp_path,
        [{"question": "a1", "answer": "p1"}, {"question": None, "answer": "p2"}],
        "parquet",
    )

    with pytest.raises(InputError, match="null value") as err:
        read_table(
            path,
            required={"anchor": "question", "positive": "answer"},
            text_columns=TEXTS,
            on_bad_rows="fail",
        )

    assert (err.value.row, err.value.column) == (2, "question")


# --- JSONL specifics ------------------------------------------------------------------------


def test_jsonl_non_string_values_are_quarantined(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"anchor": "a1", "positive": "p1"}\n'
        '{"anchor": 5, "positive": "p2"}\n'
        '{"anchor": "a3", "positive": ["p3"]}\n'
        '{"anchor": "a4", "positive": {"text": "p4"}}\n'
        '{"anchor": true, "positive": "p5"}\n'
        '{"anchor": "a6", "positive": "p6"}\n',
        encoding="utf-8",
    )

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 6]
    non_string = result.rejects.filter(pc.equal(result.rejects.column("reason"), "non_string"))
    assert sorted(zip(rows_of(non_string), non_string.column("column").to_pylist(), strict=True)) == [
        (2, "anchor"),
        (3, "positive"),
        (4, "positive"),
        (5, "anchor"),
    ]
    assert non_string.filter(pc.equal(non_string.column("source_row"), 2)).column("value").to_pylist() == ["5"]


def test_jsonl_non_string_fails_in_fail_mode(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"anchor": "a1", "positive": "p1"}\n{"anchor": "a2", "positive": 2.5}\n', encoding="utf-8")

    with pytest.raises(InputError, match="non string") as err:
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="fail")

    assert (err.value.row, err.value.column) == (2, "positive")


def test_jsonl_non_string_row_is_quarantined_exactly_once(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"anchor": "a1", "positive": "p1", "anchor_id": "q1"}\n'
        '{"anchor": 5, "positive": "p2", "anchor_id": "q2"}\n'
        '{"anchor": "a3", "positive": "p3", "anchor_id": 3}\n',
        encoding="utf-8",
    )

    result = read_table(path, required=PAIRS, optional=PAIR_IDS, text_columns=TEXTS, on_bad_rows="quarantine")

    kept, rejected = rows_of(result.table), rows_of(result.rejects)
    assert sorted(rejected) == sorted(set(rejected)), "a row is quarantined twice"
    assert not set(kept) & set(rejected), "a row is both kept and quarantined"
    assert sorted(kept + rejected) == [1, 2, 3]


def test_jsonl_invalid_lines_are_quarantined_by_line_number(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"anchor": "a1", "positive": "p1"}\n'  # 1
        '{"anchor": "a2", "positive": \n'  # 2 truncated
        "\n"  # 3 blank: skipped, still counted
        "[1, 2]\n"  # 4 not an object
        '"just a string"\n'  # 5 not an object
        '{"anchor": "a6", "positive": "p6"}\r\n',  # 6 CRLF is fine
        encoding="utf-8",
    )

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 6]
    assert result.table.column("positive").to_pylist() == ["p1", "p6"]
    assert reject_keys(result.rejects) == [
        (2, None, "invalid_json"),
        (4, None, "not_an_object"),
        (5, None, "not_an_object"),
    ]


def test_jsonl_invalid_json_fails_in_fail_mode(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"anchor": "a1", "positive": "p1"}\n{oops}\n', encoding="utf-8")

    with pytest.raises(InputError, match="invalid json") as err:
        read_table(path, required=PAIRS, on_bad_rows="fail")

    assert (err.value.path, err.value.row) == (str(path), 2)
    assert f"{path}, row 2" in str(err.value)


def test_jsonl_missing_key_is_a_null(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"anchor": "a1", "positive": "p1"}\n{"anchor": "a2"}\n', encoding="utf-8")

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1]
    assert reject_keys(result.rejects) == [(2, "positive", "null_value")]


def test_jsonl_invalid_utf8_is_quarantined_and_good_rows_kept(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(
        b'{"anchor": "a1", "positive": "p1"}\n'
        b'{"anchor": "caf\xe9 latin-1", "positive": "p2"}\n'
        b'{"anchor": "caf\xc3\xa9 utf-8", "positive": "p3"}\n'
    )

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 3]
    assert result.table.column("anchor").to_pylist() == ["a1", "café utf-8"]
    assert reject_keys(result.rejects) == [(2, None, "invalid_utf8")]
    assert "latin-1" in result.rejects.column("value")[0].as_py()


def test_jsonl_with_byte_order_mark_keeps_first_row(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"anchor": "a1", "positive": "p1"}\n{"anchor": "a2", "positive": "p2"}\n')

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 2]
    assert result.rejects.num_rows == 0


def test_jsonl_lone_surrogate_is_quarantined(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"anchor": "a1", "positive": "p1"}\n{"anchor": "bad \\ud800 text", "positive": "p2"}\n',
        encoding="utf-8",
    )

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1]
    assert rows_of(result.rejects) == [2]


# --- CSV specifics --------------------------------------------------------------------------


def test_csv_invalid_utf8_is_quarantined_and_good_rows_kept(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(
        b"anchor,positive\n"
        b"a1,p1\n"  # 1
        b"caf\xe9,p2\n"  # 2 latin-1
        b'"a3, quoted",p3\n'  # 3
        b"a4,p4 \xff\xfe\n"  # 4
        b"a5,p5\n"  # 5
    )

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 3, 5]
    assert result.table.column("anchor").to_pylist() == ["a1", "a3, quoted", "a5"]
    assert reject_keys(result.rejects) == [(2, None, "invalid_utf8"), (4, None, "invalid_utf8")]


def test_csv_invalid_utf8_fails_in_fail_mode(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"anchor,positive\na1,p1\na2,p\xe92\n")

    with pytest.raises(InputError, match="invalid utf8") as err:
        read_table(path, required=PAIRS, on_bad_rows="fail")

    assert (err.value.path, err.value.row) == (str(path), 2)


def test_csv_wrong_field_count_is_quarantined(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "anchor,positive\n"
        "a1,p1\n"  # 1
        "a2 only\n"  # 2: one field
        "a3,p3,extra\n"  # 3: three fields
        '"a4, with a comma","p4 ""quoted"""\n'  # 4
        "\n"  # 5: blank line, skipped
        "a6,p6\n",  # 6
        encoding="utf-8",
    )

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 4, 6]
    assert result.table.column("positive").to_pylist() == ["p1", 'p4 "quoted"', "p6"]
    assert reject_keys(result.rejects) == [
        (2, None, "wrong_field_count"),
        (3, None, "wrong_field_count"),
    ]


def test_csv_wrong_field_count_fails_in_fail_mode(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("anchor\tpositive\na1\tp1\na2\tp2\tp2b\n", encoding="utf-8")

    with pytest.raises(InputError, match="wrong field count") as err:
        read_table(path, required=PAIRS, on_bad_rows="fail")

    assert (err.value.path, err.value.row) == (str(path), 2)


def test_csv_byte_order_mark_is_stripped_from_header(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes("anchor,positive\na1,p1\n".encode("utf-8-sig"))

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.column("anchor").to_pylist() == ["a1"]


def test_csv_multiline_quoted_field_counts_as_one_row(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('anchor,positive\n"line one\nline two",p1\na2,p2\n', encoding="utf-8")

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.column("anchor").to_pylist() == ["line one\nline two", "a2"]
    assert rows_of(result.table) == [1, 2]


def test_csv_invalid_utf8_after_multiline_record_has_record_number(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(
        b"anchor,positive\n"
        b'"line one\nline two",p1\n'  # record 1 (lines 1-2)
        b"caf\xe9,p2\n"  # record 2 (line 3)
        b"a3,p3\n"  # record 3 (line 4)
    )

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 3]
    assert rows_of(result.rejects) == [2]


def test_csv_invalid_utf8_inside_multiline_field_keeps_later_rows(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(
        b"anchor,positive\n"
        b"a1,p1\n"  # record 1
        b'"line one\nline \xe9 two",p2\n'  # record 2 holds the bad byte
        b"a3,p3\n"  # record 3
    )

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.column("anchor").to_pylist() == ["a1", "a3"]


def test_csv_long_text_field_is_read(tmp_path):
    long_text = "word " * 40_000  # 200,000 characters, a long full-text document
    path = tmp_path / "corpus.csv"
    path.write_text(f"id,text\nd1,{long_text}\nd2,short\n", encoding="utf-8")

    result = read_table(
        path, required={"text": "text"}, optional={"id": "id"}, text_columns=("text",), on_bad_rows="quarantine"
    )

    assert result.table.column("id").to_pylist() == ["d1", "d2"]
    assert result.rejects.num_rows == 0


# --- empty inputs and other bugs ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_file_with_no_data_rows_reads_as_empty(tmp_path, fmt):
    if fmt == "parquet":
        path = tmp_path / "pairs.parquet"
        pq.write_table(
            pa.table({"anchor": pa.array([], pa.string()), "positive": pa.array([], pa.string())}),
            path,
        )
    else:
        path = tmp_path / "pairs.csv"
        path.write_text("anchor,positive\n", encoding="utf-8")

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.num_rows == 0
    assert result.rejects.num_rows == 0


def test_csv_with_every_row_malformed_returns_rejects(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("anchor,positive\na1\na2,p2,x\n", encoding="utf-8")

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.num_rows == 0
    assert reject_keys(result.rejects) == [
        (1, None, "wrong_field_count"),
        (2, None, "wrong_field_count"),
    ]


def test_missing_column_message_lists_the_file_columns(tmp_path):
    path = write_rows(tmp_path, [{"question": "a1", "positive": "p1"}], "parquet")

    with pytest.raises(InputError) as err:
        read_table(path, required=PAIRS, on_bad_rows="quarantine")

    assert "question" in str(err.value)
    assert "source_row" not in str(err.value)


def test_folder_with_conflicting_schemas_raises_input_error(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    pq.write_table(pa.table({"anchor": ["a1"], "positive": ["p1"]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"anchor": [2], "positive": ["p2"]}), folder / "part-1.parquet")

    with pytest.raises(InputError, match="disagree on schema"):
        read_table(folder, required=PAIRS, on_bad_rows="quarantine")


def test_folder_with_uppercase_suffix_is_read(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    pq.write_table(pa.table({"anchor": ["a1"], "positive": ["p1"]}), folder / "part-0.PARQUET")

    assert read_table(folder, required=PAIRS, on_bad_rows="quarantine").table.num_rows == 1


def test_all_null_optional_parquet_column_is_read_as_nulls(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({"anchor": ["a1"], "positive": ["p1"], "anchor_id": pa.array([None], pa.null())}),
        path,
    )

    result = read_table(path, required=PAIRS, optional=PAIR_IDS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.column("anchor").to_pylist() == ["a1"]
    assert result.table.column("anchor_id").to_pylist() == [None]


def test_parquet_invalid_utf8_is_quarantined_or_raises_input_error(tmp_path):
    raw = pa.array([b"a1", b"caf\xe9", b"a3"], pa.binary())
    anchors = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # unvalidated bytes
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": anchors, "positive": ["p1", "p2", "p3"]}), path)

    try:
        result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")
    except InputError:
        return
    assert rows_of(result.table) == [1, 3]
    assert rows_of(result.rejects) == [2]


# --- unreadable files -----------------------------------------------------------------------


def deny_open(monkeypatch, denied: Path) -> None:
    """Make `denied` unreadable even for root: Path.open raises EACCES for it."""
    real_open = Path.open

    def fake_open(self, *args, **kwargs):
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", fake_open)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_permission_denied_raises_input_error(tmp_path, monkeypatch, fmt):
    path = write_rows(tmp_path, [{"anchor": "a1", "positive": "p1"}], fmt)
    deny_open(monkeypatch, path)

    with pytest.raises(InputError, match=r"cannot read file \(Permission denied") as err:
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert err.value.path == str(path)


def test_permission_denied_on_a_folder_file_names_that_file(tmp_path, monkeypatch):
    folder = write_rows(tmp_path, [{"anchor": "a1", "positive": "p1"}] * 2, "folder")
    deny_open(monkeypatch, folder / "part-1.parquet")

    with pytest.raises(InputError, match="Permission denied") as err:
        read_table(folder, required=PAIRS, on_bad_rows="quarantine")

    assert err.value.path == str(folder / "part-1.parquet")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_mode_raises_input_error(tmp_path):
    path = write_rows(tmp_path, [{"anchor": "a1", "positive": "p1"}], "jsonl")
    path.chmod(0)

    with pytest.raises(InputError, match="cannot read file"):
        read_table(path, required=PAIRS, on_bad_rows="quarantine")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_not_read(tmp_path):
    path = tmp_path / "pairs.jsonl"
    os.mkfifo(path)

    with pytest.raises(InputError, match="not a regular file") as err:
        read_table(path, required=PAIRS, on_bad_rows="quarantine")

    assert err.value.path == str(path)


# --- fail mode stops at the first bad row in file order -------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "folder", "jsonl"])
def test_fail_mode_raises_on_first_row_across_columns_and_reasons(tmp_path, fmt):
    rows = [
        {"anchor": "a1", "positive": "p1"},
        {"anchor": "a2", "positive": " "},  # 2: empty positive (the second text column)
        {"anchor": None, "positive": "p3"},  # 3: null anchor (the first column, first reason)
    ]
    path = write_rows(tmp_path, rows, fmt)

    with pytest.raises(InputError, match="empty text") as err:
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="fail")

    assert (err.value.row, err.value.column) == (2, "positive")


def test_fail_mode_raises_on_a_value_before_a_later_parse_error(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"anchor": "", "positive": "p1"}\n{oops}\n', encoding="utf-8")

    with pytest.raises(InputError, match="empty text") as err:
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="fail")

    assert (err.value.row, err.value.column) == (1, "anchor")


def test_fail_mode_raises_on_a_parse_error_before_a_later_value(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("anchor,positive\na1\na2,\n", encoding="utf-8")

    with pytest.raises(InputError, match="wrong field count") as err:
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="fail")

    assert (err.value.row, err.value.column) == (1, None)


def test_fail_mode_message_shows_the_value_and_the_fix(tmp_path):
    path = write_rows(tmp_path, [{"anchor": "a1", "positive": "\t"}], "parquet")

    with pytest.raises(InputError) as err:
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="fail")

    assert "'\\t'" in str(err.value)
    assert "on_bad_rows" in str(err.value)


def test_rejects_are_in_row_order(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(
        b'{"anchor": "a1", "positive": ""}\n'  # 1 empty_text (checked after parsing)
        b"{oops}\n"  # 2 invalid_json (found while parsing)
        b'{"anchor": null, "positive": "p3"}\n'  # 3 null_value
        b'{"anchor": "caf\xe9", "positive": "p4"}\n'  # 4 invalid_utf8
    )

    rejects = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine").rejects

    assert rows_of(rejects) == [1, 2, 3, 4]


# --- empty and all-invalid JSONL ------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_jsonl_says_there_are_no_valid_rows(tmp_path, payload):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(payload)

    with pytest.raises(InputError, match="no valid rows: the file is empty") as err:
        read_table(path, required=PAIRS, on_bad_rows="quarantine")

    assert err.value.path == str(path)


def test_jsonl_with_only_invalid_lines_says_there_are_no_valid_rows(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"{oops}\n\n[1]\n")

    with pytest.raises(InputError, match=r"no valid rows: all 2 .* first at row 1 \(invalid json\)") as err:
        read_table(path, required=PAIRS, on_bad_rows="quarantine")

    assert err.value.path == str(path)


def test_jsonl_with_only_invalid_lines_in_fail_mode_names_the_first(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n[1]\n{oops}\n")

    with pytest.raises(InputError, match="not an object") as err:
        read_table(path, required=PAIRS, on_bad_rows="fail")

    assert err.value.row == 2


def test_jsonl_key_that_is_always_null_is_a_column_of_nulls(tmp_path):
    path = write_rows(tmp_path, [{"anchor": "a1", "positive": None}, {"anchor": "a2", "positive": None}], "jsonl")

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.num_rows == 0
    assert reject_keys(result.rejects) == [(1, "positive", "null_value"), (2, "positive", "null_value")]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_missing_column_message_lists_the_columns_of_text_formats(tmp_path, fmt):
    path = write_rows(tmp_path, [{"question": "a1", "answer": "p1"}], fmt)

    with pytest.raises(InputError) as err:
        read_table(path, required=PAIRS, on_bad_rows="quarantine")

    assert "the file has ['question', 'answer']" in str(err.value)


# --- JSONL values ---------------------------------------------------------------------------


def test_jsonl_non_string_optional_value_rejects_the_row(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"anchor": "a1", "positive": "p1", "anchor_id": 3}\n'
        '{"anchor": "a2", "positive": "p2", "positive_id": {"id": "d2"}}\n'
        '{"anchor": "a3", "positive": "p3", "anchor_id": "q3"}\n',
        encoding="utf-8",
    )

    result = read_table(path, required=PAIRS, optional=PAIR_IDS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [3]
    assert result.rejects.select(["source_row", "column", "reason", "value"]).to_pylist() == [
        {"source_row": 1, "column": "anchor_id", "reason": "non_string", "value": "3"},
        {"source_row": 2, "column": "positive_id", "reason": "non_string", "value": '{"id": "d2"}'},
    ]


def test_jsonl_lone_surrogate_reason_and_value_are_stored_safely(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"anchor": "bad \\udc80 text", "positive": "p1"}\n', encoding="utf-8")

    rejects = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine").rejects

    assert reject_keys(rejects) == [(1, "anchor", "invalid_unicode")]
    assert rejects.column("value").to_pylist() == ["bad \\udc80 text"]
    pq.write_table(rejects, tmp_path / "rejects.parquet")  # every value is valid UTF-8


def test_jsonl_surrogate_pair_escape_is_valid_text(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"anchor": "smile \\ud83d\\ude00", "positive": "p1"}\n', encoding="utf-8")

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.column("anchor").to_pylist() == ["smile \U0001f600"]


def test_jsonl_lone_surrogate_fails_in_fail_mode(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"anchor": "a1", "positive": "p \\ud800"}\n', encoding="utf-8")

    with pytest.raises(InputError, match="invalid unicode") as err:
        read_table(path, required=PAIRS, on_bad_rows="fail")

    assert (err.value.row, err.value.column) == (1, "positive")


@pytest.mark.parametrize("line", ["[" * 100_000 + "]" * 100_000, '{"anchor": ' + "9" * 5000 + ', "positive": "p"}'])
def test_jsonl_pathological_lines_are_invalid_json(tmp_path, line):
    path = tmp_path / "pairs.jsonl"
    path.write_text(line + '\n{"anchor": "a2", "positive": "p2"}\n', encoding="utf-8")

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [2]
    assert reject_keys(result.rejects) == [(1, None, "invalid_json")]


def test_jsonl_invalid_utf8_value_is_readable(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"anchor": "caf\xe9", "positive": "p"}\r\n')

    with pytest.raises(InputError, match="no valid rows"):
        read_table(path, required=PAIRS, on_bad_rows="quarantine")

    path.write_bytes(b'{"anchor": "a", "positive": "p"}\n{"anchor": "caf\xe9", "positive": "p"}\r\n')
    rejects = read_table(path, required=PAIRS, on_bad_rows="quarantine").rejects
    assert rejects.column("value").to_pylist() == ['{"anchor": "caf\\xe9", "positive": "p"}']


# --- CSV values -----------------------------------------------------------------------------


def test_csv_invalid_utf8_reject_value_shows_the_byte(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"anchor,positive\na1,p1\ncaf\xe9,p2\n")

    rejects = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine").rejects

    assert rejects.column("value").to_pylist() == ["caf\\xe9,p2"]
    pq.write_table(rejects, tmp_path / "rejects.parquet")


def test_csv_invalid_utf8_in_multiline_field_rejects_one_record(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b'anchor,positive\n"one\ntw\xffo\nthree",p1\na2,p2\n"x\ny",p3\n')

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [2, 3]
    assert reject_keys(result.rejects) == [(1, None, "invalid_utf8")]


def test_duplicate_wanted_column_raises(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("anchor,positive,anchor\na1,p1,a1b\n", encoding="utf-8")

    with pytest.raises(InputError, match="2 columns named 'anchor'") as err:
        read_table(path, required=PAIRS, on_bad_rows="quarantine")

    assert err.value.column == "anchor"


def test_duplicate_parquet_column_raises(tmp_path):
    path = tmp_path / "pairs.parquet"
    columns = [pa.array(["a"]), pa.array(["p"]), pa.array(["b"])]
    table = pa.Table.from_arrays(columns, names=["anchor", "positive", "anchor"])
    pq.write_table(table, path)

    with pytest.raises(InputError, match="2 columns named 'anchor'"):
        read_table(path, required=PAIRS, on_bad_rows="quarantine")


def test_duplicate_unwanted_column_is_ignored(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("anchor,x,positive,x\na1,1,p1,2\n", encoding="utf-8")

    assert read_table(path, required=PAIRS, on_bad_rows="quarantine").table.num_rows == 1


# --- Parquet values and folders -------------------------------------------------------------


def unvalidated_strings(values: list[bytes | None]) -> pa.Array:
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers(), null_count=raw.null_count)


def test_parquet_invalid_utf8_names_row_and_column(tmp_path):
    path = tmp_path / "pairs.parquet"
    table = pa.table(
        {
            "anchor": ["a1", "a2", "a3", "a4"],
            "positive": unvalidated_strings([b"p1", b"p\xff2", None, b"p4"]),
            "anchor_id": unvalidated_strings([b"q1", b"q2", b"q3", b"q\xc34"]),
        }
    )
    pq.write_table(table, path)

    result = read_table(path, required=PAIRS, optional=PAIR_IDS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1]
    assert result.rejects.select(["source_row", "column", "reason", "value"]).to_pylist() == [
        {"source_row": 2, "column": "positive", "reason": "invalid_utf8", "value": "p\\xff2"},
        {"source_row": 3, "column": "positive", "reason": "null_value", "value": None},
        {"source_row": 4, "column": "anchor_id", "reason": "invalid_utf8", "value": "q\\xc34"},
    ]


def test_parquet_invalid_utf8_fails_in_fail_mode(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": unvalidated_strings([b"a1", b"\xe9"]), "positive": ["p1", "p2"]}), path)

    with pytest.raises(InputError, match="invalid utf8") as err:
        read_table(path, required=PAIRS, on_bad_rows="fail")

    assert (err.value.row, err.value.column) == (2, "anchor")


def test_parquet_invalid_utf8_in_dictionary_column_is_quarantined(tmp_path):
    path = tmp_path / "pairs.parquet"
    anchors = unvalidated_strings([b"a1", b"\xe9", b"a1"]).dictionary_encode()
    pq.write_table(pa.table({"anchor": anchors, "positive": ["p1", "p2", "p3"]}), path)

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 3]
    assert reject_keys(result.rejects) == [(2, "anchor", "invalid_utf8")]


def test_all_null_required_parquet_column_quarantines_every_row(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": ["a1", "a2"], "positive": pa.array([None, None], pa.null())}), path)

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.num_rows == 0
    assert reject_keys(result.rejects) == [(1, "positive", "null_value"), (2, "positive", "null_value")]


def test_folder_merges_every_kind_of_string_column(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    kinds = [
        pa.array(["a0"], pa.string()),
        pa.array(["a1"], pa.large_string()),
        pa.array(["a2"]).dictionary_encode(),
        pa.array([None], pa.null()),
    ]
    for i, anchors in enumerate(kinds):
        pq.write_table(pa.table({"anchor": anchors, "positive": [f"p{i}"]}), folder / f"part-{i}.parquet")

    result = read_table(folder, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert result.table.column("anchor").to_pylist() == ["a0", "a1", "a2"]
    assert reject_keys(result.rejects) == [(1, "anchor", "null_value")]
    assert result.rejects.column("source_file").to_pylist() == [str(folder / "part-3.parquet")]


def test_folder_with_conflicting_schemas_names_the_files(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    pq.write_table(pa.table({"anchor": ["a1"], "positive": ["p1"]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"anchor": [2], "positive": ["p2"]}), folder / "part-1.parquet")

    with pytest.raises(InputError) as err:
        read_table(folder, required=PAIRS, on_bad_rows="quarantine")

    assert err.value.path == str(folder)
    assert err.value.column == "anchor"
    assert "string in part-0.parquet but int64 in part-1.parquet" in str(err.value)


def test_folder_file_missing_a_required_column_is_named(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    pq.write_table(pa.table({"anchor": ["a1"], "positive": ["p1"]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"anchor": ["a2"], "answer": ["p2"]}), folder / "part-1.parquet")

    with pytest.raises(InputError, match="missing required column") as err:
        read_table(folder, required=PAIRS, on_bad_rows="quarantine")

    assert (err.value.path, err.value.column) == (str(folder / "part-1.parquet"), "positive")
    assert "['anchor', 'answer']" in str(err.value)


def test_folder_skips_hidden_and_metadata_files(tmp_path):
    folder = write_rows(tmp_path, [{"anchor": "a1", "positive": "p1"}] * 2, "folder")
    (folder / "._part-0.parquet").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "_common_metadata.parquet").write_bytes(b"not read")
    (folder / "sub.parquet").mkdir()

    assert read_table(folder, required=PAIRS, on_bad_rows="quarantine").table.num_rows == 2


def test_every_reject_table_writes_to_parquet(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(
        b'{"anchor": "\\ud800", "positive": "p"}\n'
        b'{"anchor": "\xff\xfe", "positive": "p"}\n'
        b'{"anchor": ["\\udfff"], "positive": "p"}\n'
        b'{"anchor": "a", "positive": "p"}\n'
    )

    rejects = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine").rejects

    assert rejects.num_rows == 3
    rejects.validate(full=True)
    pq.write_table(rejects, tmp_path / "rejects.parquet")


def test_integer_id_columns_are_read_as_decimal_strings(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({"anchor_id": [7, 12], "anchor": ["a", "b"], "positive_id": [3, 4], "positive": ["p", "q"]}), path
    )

    table = read_table(path, required=PAIRS, optional=PAIR_IDS, text_columns=TEXTS, on_bad_rows="quarantine").table

    assert table.column("anchor_id").to_pylist() == ["7", "12"]
    assert table.column("positive_id").to_pylist() == ["3", "4"]


def test_integer_text_column_still_raises(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": [1, 2], "positive": ["p", "q"]}), path)

    with pytest.raises(InputError, match="must hold strings"):
        read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")


def test_jsonl_line_of_non_json_whitespace_is_invalid_json_not_blank(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"anchor": "a1", "positive": "p1"}\n\x0c\n\n{"anchor": "a4", "positive": "p4"}\n', encoding="utf-8"
    )

    result = read_table(path, required=PAIRS, text_columns=TEXTS, on_bad_rows="quarantine")

    assert rows_of(result.table) == [1, 4]
    assert reject_keys(result.rejects) == [(2, None, "invalid_json")]
