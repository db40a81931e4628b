"""Fuzz read_table and prepare_inputs: whatever the file holds, they return or raise InputError.

Random bytes, mutated valid files and random small tables (random column names and types,
nulls, Unicode) go through every reader; the only exception allowed is
:class:`~negminer.errors.InputError`, and every result must honour the readers' contract
(string columns, valid UTF-8, each row kept or rejected exactly once, rejects in row order).

Runs are derandomized so the suite is deterministic; set ``NEGMINER_FUZZ_EXAMPLES`` (e.g.
5000) to explore with a fresh random seed and more examples per format.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negminer.config import InputConfig
from negminer.errors import InputError
from negminer.storage.inputs import prepare_inputs
from negminer.storage.readers import REJECT_SCHEMA, ReadResult, read_table

EXAMPLES = int(os.environ.get("NEGMINER_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="NEGMINER_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PAIRS = {"anchor": "anchor", "positive": "positive"}
PAIR_IDS = {"anchor_id": "anchor_id", "positive_id": "positive_id"}
TEXTS = ("anchor", "positive")
PAIR_COLUMNS = {"required": PAIRS, "optional": PAIR_IDS, "text_columns": TEXTS}
CORPUS_COLUMNS = {"required": {"text": "text"}, "optional": {"id": "id", "title": "title"}, "text_columns": ("text",)}
NAMES = ["anchor", "positive", "anchor_id", "positive_id", "text", "id", "title"]
POLICIES = st.sampled_from(["quarantine", "fail"])

# --- strategies -------------------------------------------------------------------------------

# Any code point, lone surrogates included (JSON can escape them, UTF-8 cannot encode them).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
# What a Parquet/Arrow string can hold.
valid_text = st.text(max_size=12) | st.sampled_from(["", " ", "\t\n", "\u3000", "a", "A ", "Doc."])
column_names = st.sampled_from(NAMES) | st.text(max_size=6)


def _json_value() -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text | valid_text

    def nested(inner: st.SearchStrategy) -> st.SearchStrategy:
        return st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3)

    return st.recursive(scalars, nested, max_leaves=5)


@st.composite
def jsonl_payloads(draw: st.DrawFn) -> bytes:
    """Lines of JSON objects with likely keys and any values, mixed with junk lines."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["object", "object", "object", "json", "text", "bytes", "blank"]))
        if kind == "object":
            record = draw(st.dictionaries(column_names, _json_value(), max_size=5))
            lines.append(json.dumps(record, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass"))
        elif kind == "json":
            lines.append(json.dumps(draw(_json_value())).encode())
        elif kind == "text":
            lines.append(draw(any_text).encode("utf-8", "surrogatepass"))
        elif kind == "bytes":
            lines.append(draw(st.binary(max_size=30)))
        else:
            lines.append(b"  ")
    bom = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
    return bom + draw(st.sampled_from([b"\n", b"\r\n"])).join(lines)


@st.composite
def csv_payloads(draw: st.DrawFn) -> bytes:
    """A header and records of quoted, multi-line, wrong-width and undecodable fields."""
    header = draw(st.lists(column_names, min_size=0, max_size=5))
    handle = io.StringIO(newline="")
    writer = csv.writer(handle, delimiter=draw(st.sampled_from([",", "\t"])))
    writer.writerow(header)
    field = any_text | valid_text | st.sampled_from(['"', 'a,"b"', "x\ny", "\r", "line\r\nbreak"])
    for _ in range(draw(st.integers(0, 6))):
        width = draw(st.sampled_from([len(header), len(header), max(len(header) - 1, 0), len(header) + 1]))
        writer.writerow(draw(st.lists(field, min_size=width, max_size=width)))
    payload = handle.getvalue().encode("utf-8", "surrogatepass")
    return payload + draw(st.binary(max_size=8))


def _values(draw: st.DrawFn, values: st.SearchStrategy, n: int) -> list:
    return draw(st.lists(st.none() | values, min_size=n, max_size=n))


def _arrow_array(draw: st.DrawFn, kind: str, n: int) -> pa.Array:
    if kind in ("string", "large_string"):
        return pa.array(_values(draw, valid_text, n), pa.string() if kind == "string" else pa.large_string())
    if kind == "dictionary":
        return pa.array(_values(draw, valid_text, n), pa.string()).dictionary_encode()
    if kind == "null":
        return pa.nulls(n)
    if kind == "int64":
        return pa.array(_values(draw, st.integers(-(2**63), 2**63 - 1), n), pa.int64())
    if kind == "float64":
        return pa.array(_values(draw, st.floats(), n), pa.float64())
    if kind == "bool":
        return pa.array(_values(draw, st.booleans(), n), pa.bool_())
    if kind == "binary":
        return pa.array(_values(draw, st.binary(max_size=6), n), pa.binary())
    if kind == "list":
        return pa.array(_values(draw, st.lists(valid_text, max_size=2), n), pa.list_(pa.string()))
    return pa.StructArray.from_arrays([pa.array(_values(draw, valid_text, n), pa.string())], names=["text"])


ARROW_KINDS = ["string"] * 3 + ["large_string", "dictionary", "null", "int64", "float64", "bool", "binary"]
ARROW_KINDS += ["list", "struct"]


@st.composite
def arrow_tables(draw: st.DrawFn) -> pa.Table:
    """A small table with random column names (duplicates possible), types, nulls and Unicode."""
    n = draw(st.integers(0, 5))
    names = draw(st.lists(column_names, min_size=0, max_size=6))
    arrays = [_arrow_array(draw, draw(st.sampled_from(ARROW_KINDS)), n) for _ in names]
    if not arrays:
        return pa.table({"unrelated": pa.array(range(n), pa.int64())})
    return pa.Table.from_arrays(arrays, names=names)


PAIR_TEXTS = st.sampled_from(["", " ", "Doc.", "doc.", "Query.", "Alpha beta gamma.", "q1", "d1"]) | valid_text
PAIR_IDS_VALUES = st.sampled_from(["q1", "q2", "d1", "x7", ""])


@st.composite
def pair_tables(draw: st.DrawFn) -> pa.Table:
    """Mostly well-formed pairs: string anchor/positive (and maybe ids) with planted problems."""
    n = draw(st.integers(0, 6))
    columns = {name: pa.array(_values(draw, PAIR_TEXTS, n), pa.string()) for name in TEXTS}
    for name in draw(st.lists(st.sampled_from(list(PAIR_IDS)), unique=True)):
        columns[name] = pa.array(_values(draw, PAIR_IDS_VALUES, n), pa.string())
    return pa.table(columns)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@st.composite
def mutated_parquet(draw: st.DrawFn) -> bytes:
    """A valid Parquet file with a few bytes changed, or cut short."""
    payload = bytearray(parquet_bytes(draw(pair_tables())))
    for _ in range(draw(st.integers(1, 4))):
        payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        payload = payload[: draw(st.integers(0, len(payload)))]
    return bytes(payload)


# --- invariants -------------------------------------------------------------------------------


def check_result(result: ReadResult, text_columns: tuple[str, ...]) -> None:
    table, rejects = result
    assert rejects.schema == REJECT_SCHEMA
    table.validate(full=True)
    rejects.validate(full=True)  # also proves every stored value is valid UTF-8
    assert table.schema.field("source_row").type == pa.int64()
    assert all(pa.types.is_string(f.type) for f in table.schema if f.name != "source_row")
    kept, rejected = table.column("source_row").to_pylist(), rejects.column("source_row").to_pylist()
    assert kept == sorted(set(kept)) and rejected == sorted(rejected)
    assert len(set(rejected)) == len(rejected), "a row is quarantined twice"
    assert not set(kept) & set(rejected), "a row is both kept and quarantined"
    for name in text_columns:
        if name in table.column_names:
            column = table.column(name)
            assert column.null_count == 0
            assert not pc.any(pc.equal(pc.utf8_trim_whitespace(column), "")).as_py()


def read_or_input_error(path: Path, on_bad_rows: str, *, corpus: bool = False) -> None:
    """Read `path` as pairs (or as a corpus); a result must honour the contract."""
    columns = CORPUS_COLUMNS if corpus else PAIR_COLUMNS
    try:
        result = read_table(path, **columns, on_bad_rows=on_bad_rows)
    except InputError as err:
        assert str(err)
        return
    check_result(result, columns["text_columns"])


def prepare_or_input_error(pairs: Path, corpus: Path | None, on_bad_rows: str) -> None:
    try:
        prepared = prepare_inputs(pairs, corpus, config=InputConfig(on_bad_rows=on_bad_rows))
    except InputError as err:
        assert str(err)
        return
    counts = prepared.counts
    assert prepared.pairs.num_rows > 0
    assert set(prepared.pairs.column("anchor_idx").to_pylist()) == set(range(prepared.anchors.num_rows))
    assert max(prepared.pairs.column("doc_idx").to_pylist()) < prepared.docs.num_rows
    assert prepared.docs.column("doc_id").null_count == 0
    assert len(set(prepared.docs.column("doc_id").to_pylist())) == prepared.docs.num_rows
    pair_rejects = pc.sum(pc.equal(prepared.rejects.column("source_file"), str(pairs))).as_py() or 0
    assert counts["pairs_in"] == prepared.pairs.num_rows + counts.get("duplicate_pairs", 0) + pair_rejects
    assert counts["rejected_rows"] == prepared.rejects.num_rows
    prepared.rejects.validate(full=True)
    if on_bad_rows == "fail":
        assert prepared.rejects.num_rows == 0


def in_temp_dir(test: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        test(Path(tmp))


SUFFIXES = {
    "parquet": st.sampled_from([".parquet", ".pq"]),
    "jsonl": st.sampled_from([".jsonl", ".ndjson", ".json"]),
    "csv": st.sampled_from([".csv", ".tsv", ".CSV"]),
}
PAYLOADS = {
    "parquet": st.binary(max_size=600) | mutated_parquet() | pair_tables().map(parquet_bytes),
    "jsonl": st.binary(max_size=300) | jsonl_payloads(),
    "csv": st.binary(max_size=300) | csv_payloads(),
}

# --- the fuzz tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(SUFFIXES))
def test_any_bytes_read_or_raise_input_error(fmt):
    @FUZZ
    @given(payload=PAYLOADS[fmt], suffix=SUFFIXES[fmt], on_bad_rows=POLICIES)
    def run(payload: bytes, suffix: str, on_bad_rows: str) -> None:
        def test(tmp: Path) -> None:
            path = tmp / f"pairs{suffix}"
            path.write_bytes(payload)
            read_or_input_error(path, on_bad_rows)
            read_or_input_error(path, on_bad_rows, corpus=True)

        in_temp_dir(test)

    run()


@pytest.mark.parametrize("fmt", list(SUFFIXES))
def test_any_bytes_prepare_or_raise_input_error(fmt):
    @FUZZ
    @given(pairs=PAYLOADS[fmt], corpus=st.none() | PAYLOADS[fmt], suffix=SUFFIXES[fmt], on_bad_rows=POLICIES)
    def run(pairs: bytes, corpus: bytes | None, suffix: str, on_bad_rows: str) -> None:
        def test(tmp: Path) -> None:
            pairs_path = tmp / f"pairs{suffix}"
            pairs_path.write_bytes(pairs)
            corpus_path = None
            if corpus is not None:
                corpus_path = tmp / f"corpus{suffix}"
                corpus_path.write_bytes(corpus)
            prepare_or_input_error(pairs_path, corpus_path, on_bad_rows)

        in_temp_dir(test)

    run()


@FUZZ
@given(tables=st.lists(arrow_tables(), min_size=1, max_size=3), on_bad_rows=POLICIES)
def test_random_tables_read_or_raise_input_error(tables, on_bad_rows):
    def test(tmp: Path) -> None:
        pq.write_table(tables[0], tmp / "single.parquet")
        folder = tmp / "folder"
        folder.mkdir()
        for i, table in enumerate(tables):
            pq.write_table(table, folder / f"part-{i}.PARQUET")
        for path in (tmp / "single.parquet", folder):
            read_or_input_error(path, on_bad_rows)
            read_or_input_error(path, on_bad_rows, corpus=True)

    in_temp_dir(test)


@FUZZ
@given(pairs=pair_tables() | arrow_tables(), corpus=st.none() | arrow_tables(), on_bad_rows=POLICIES)
def test_random_tables_prepare_or_raise_input_error(pairs, corpus, on_bad_rows):
    def test(tmp: Path) -> None:
        pq.write_table(pairs, tmp / "pairs.parquet")
        corpus_path = None
        if corpus is not None:
            corpus_path = tmp / "corpus.parquet"
            pq.write_table(corpus, corpus_path)
        prepare_or_input_error(tmp / "pairs.parquet", corpus_path, on_bad_rows)

    in_temp_dir(test)
