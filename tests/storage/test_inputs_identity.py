"""prepare_inputs (hash-based) against the previous implementation, kept as a reference oracle.

``tests/storage/previous_inputs.py`` is the row-by-row implementation that held every text in
Python lists and dicts; the current one must give the same tables, chunk for chunk, and so the
same Parquet bytes, the same counts (in the same order) and the same errors.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer.config import InputConfig
from negminer.errors import InputError
from negminer.storage import input_keys
from negminer.storage.atomic import write_parquet_atomic
from negminer.storage.inputs import prepare_inputs
from negminer.textkeys import text_key

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "scifact-sample"
TABLES = ("anchors", "docs", "pairs", "rejects")


def _previous():
    spec = importlib.util.spec_from_file_location("previous_inputs", Path(__file__).with_name("previous_inputs.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


PREVIOUS = _previous()


def run_both(pairs, corpus=None, config: InputConfig | None = None):
    config = config or InputConfig()
    results = []
    for fn in (prepare_inputs, PREVIOUS.prepare_inputs):
        try:
            results.append(fn(pairs, corpus, config=config))
        except InputError as err:
            results.append(err)
    return results


def assert_identical(pairs, corpus=None, config: InputConfig | None = None, tmp: Path | None = None):
    new, old = run_both(pairs, corpus, config)
    if isinstance(old, InputError):
        assert isinstance(new, InputError), new
        assert str(new) == str(old)
        return None
    assert not isinstance(new, InputError), new
    assert list(new.counts.items()) == list(old.counts.items())
    for stem in TABLES:
        a, b = getattr(new, stem), getattr(old, stem)
        assert a.schema.equals(b.schema, check_metadata=True), stem
        assert a.equals(b), stem
        assert [c.num_chunks for c in a.columns] == [c.num_chunks for c in b.columns], stem
        if tmp is not None:
            write_parquet_atomic(tmp / f"new-{stem}.parquet", a)
            write_parquet_atomic(tmp / f"old-{stem}.parquet", b)
            assert (tmp / f"new-{stem}.parquet").read_bytes() == (tmp / f"old-{stem}.parquet").read_bytes(), stem
    return new


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def hid(text: str) -> str:
    return f"h:{text_key(text).hex()}"


def test_scifact_sample_is_byte_identical(tmp_path):
    prepared = assert_identical(SAMPLE / "pairs.parquet", SAMPLE / "corpus.parquet", tmp=tmp_path)
    assert prepared.pairs.num_rows > 0
    assert_identical(SAMPLE / "pairs.parquet", None, tmp=tmp_path)


CORPUS = [
    {"id": "d1", "text": "Alpha beta", "title": "T1"},
    {"id": "d2", "text": "Gamma delta", "title": None},
    {"id": "d1", "text": "alpha   BETA"},  # duplicate id, same normalised text
    {"id": "d1", "text": "something else"},  # conflicting id
    {"id": None, "text": "No id doc"},
    {"id": "", "text": "empty id doc"},
    {"id": "d3", "text": "   "},  # blank
    {"id": "d4", "text": None},  # null
    {"id": "d5", "text": "Gamma delta"},  # same text as d2, other id
    {"id": hid("No id doc"), "text": "no ID doc"},  # explicit id equal to a hashed one
]

PAIRS = [
    {"anchor": "q one", "positive": "Alpha beta", "anchor_id": "a1", "positive_id": None},  # corpus by text
    {"anchor": "q one", "positive": "pos x", "anchor_id": "a1", "positive_id": "d2"},  # conflicting pos id
    {"anchor": "q ONE", "positive": "gamma  delta", "anchor_id": None, "positive_id": "d5"},  # corpus by id
    {"anchor": "q one", "positive": "Alpha beta", "anchor_id": "a1", "positive_id": None},  # duplicate pair
    {"anchor": "q two", "positive": "new positive", "anchor_id": "a1", "positive_id": None},  # conflicting anchor
    {"anchor": "q two", "positive": "new positive", "anchor_id": "", "positive_id": "p9"},
    {"anchor": "q two", "positive": "NEW positive", "anchor_id": None, "positive_id": "p10"},  # alias of p9's doc
    {"anchor": "q three", "positive": "other", "anchor_id": "a3", "positive_id": "p10"},  # p10 names another text
    {"anchor": "q three", "positive": "", "anchor_id": "a3", "positive_id": None},  # empty text
    {"anchor": None, "positive": "x", "anchor_id": "a4", "positive_id": None},  # null anchor
    {"anchor": "same", "positive": "SAME", "anchor_id": "a5", "positive_id": None},  # anchor equals positive
    {"anchor": "q three", "positive": "third", "anchor_id": "a3", "positive_id": "p11"},
    {"anchor": "q three", "positive": "fourth", "anchor_id": "a3", "positive_id": None},  # several positives
    {"anchor": "q four", "positive": "No id doc", "anchor_id": None, "positive_id": None},
    {"anchor": "q five", "positive": "fifth", "anchor_id": "a6", "positive_id": "d1"},  # corpus id, other text
]


@pytest.mark.parametrize("batch_rows", [2, 65_536])
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_crafted_inputs_are_byte_identical(tmp_path, monkeypatch, batch_rows, suffix):
    monkeypatch.setattr(input_keys, "BATCH_ROWS", batch_rows)
    corpus = write_parquet(tmp_path / "corpus.parquet", CORPUS)
    if suffix == ".jsonl":
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS), encoding="utf-8")
    else:
        pairs = write_parquet(tmp_path / "pairs.parquet", PAIRS)
    prepared = assert_identical(pairs, corpus, tmp=tmp_path)
    assert prepared.rejects.num_rows >= 8
    assert_identical(pairs, None, tmp=tmp_path)
    for column in ("anchor_id", "positive_id"):  # without an id column
        table = pq.read_table(tmp_path / "corpus.parquet")
        write_parquet(tmp_path / "p.parquet", [{k: v for k, v in r.items() if k != column} for r in PAIRS])
        assert_identical(tmp_path / "p.parquet", corpus, tmp=tmp_path)
    pq.write_table(table.drop_columns(["id", "title"]), tmp_path / "c2.parquet")
    assert_identical(pairs, tmp_path / "c2.parquet", tmp=tmp_path)


def test_fail_mode_and_empty_inputs_raise_the_same(tmp_path):
    corpus = write_parquet(tmp_path / "corpus.parquet", CORPUS)
    pairs = write_parquet(tmp_path / "pairs.parquet", PAIRS)
    new, old = run_both(pairs, corpus, InputConfig(on_bad_rows="fail"))
    assert isinstance(new, InputError) and str(new) == str(old)
    clean = write_parquet(tmp_path / "clean.parquet", [r for r in PAIRS[:1]])
    new, old = run_both(clean, corpus, InputConfig(on_bad_rows="fail"))  # the corpus conflict raises
    assert isinstance(new, InputError) and str(new) == str(old)
    only_bad = write_parquet(tmp_path / "bad.parquet", [PAIRS[10]])
    new, old = run_both(only_bad, corpus)
    assert isinstance(new, InputError) and str(new) == str(old)
    empty = write_parquet(tmp_path / "empty.parquet", [], pa.schema([("id", pa.string()), ("text", pa.string())]))
    new, old = run_both(clean, empty)
    assert isinstance(new, InputError) and str(new) == str(old)


def test_folder_and_integer_ids_are_byte_identical(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    write_parquet(folder / "a.parquet", PAIRS[:7])
    write_parquet(folder / "b.parquet", PAIRS[7:])
    corpus = write_parquet(
        tmp_path / "corpus.parquet",
        [{"id": i % 7, "text": f"doc {i % 9}", "title": f"t{i}"} for i in range(30)],
    )
    assert_identical(folder, corpus, tmp=tmp_path)


def _random_rows(rng: random.Random, n: int, texts: list[str], ids: list[str | None]) -> list[dict]:
    return [
        {
            "anchor": rng.choice(texts),
            "positive": rng.choice(texts),
            "anchor_id": rng.choice(ids),
            "positive_id": rng.choice(ids),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize("seed", range(12))
def test_random_collisions_are_byte_identical(tmp_path, monkeypatch, seed):
    """Small pools of texts and ids make every kind of duplicate and conflict, chains included."""
    monkeypatch.setattr(input_keys, "BATCH_ROWS", 7)
    rng = random.Random(seed)
    texts = [f"text {i}" for i in range(rng.randint(3, 12))] + ["TEXT 1", " text  2 ", "", None]
    ids: list[str | None] = [None, "", *(f"id{i}" for i in range(rng.randint(1, 8)))]
    if seed % 3 == 0:  # explicit ids that look like the hashed id of some (other) text
        ids += [hid("text 0"), hid("text 1"), hid("text 5")]
    corpus_rows = [
        {"id": rng.choice(ids), "text": rng.choice(texts), "title": rng.choice([None, "t"])}
        for _ in range(rng.randint(0, 25))
    ]
    pairs = write_parquet(tmp_path / "pairs.parquet", _random_rows(rng, rng.randint(1, 80), texts, ids))
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("title", pa.string())])
    corpus = write_parquet(tmp_path / "corpus.parquet", corpus_rows, schema)
    assert_identical(pairs, corpus, tmp=tmp_path)
    assert_identical(pairs, None, tmp=tmp_path)


def _greedy_chunks(values: list[str | None], limit: int) -> list[list[str | None]]:
    """pyarrow's rule for ``pa.array(values, pa.string())``: a value that would take the current
    chunk's data past the limit starts a new chunk (checked once at the real 2**31 - 2)."""
    chunks: list[list[str | None]] = [[]]
    size = 0
    for value in values:
        length = len(value.encode()) if value else 0
        if size + length > limit and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append(value)
        size += length
    return chunks


def test_string_columns_chunk_like_pa_array(monkeypatch):
    """Text columns over 2 GiB keep the chunks the previous implementation's pa.array gave."""
    monkeypatch.setattr(input_keys, "STRING_CHUNK_BYTES", 10)
    values = ["abcd", None, "efghij", "k", "", "lmnopqrstu", "v", "wxyz", "é" * 5, "12345", "6"]
    column = pa.chunked_array([pa.array(values[:3]), pa.array(values[3:4]), pa.array(values[4:])])
    for rows in ([*range(len(values))], [0, 2, 5, 6, 8, 9, 10], [1, 3], []):
        pieces = input_keys.take_pieces(column, np.array(rows, dtype=np.int64))
        got = input_keys.string_chunks([*pieces, pa.array(["tail"])])
        expected = _greedy_chunks([*(values[i] for i in rows), "tail"], 10)
        assert [chunk.to_pylist() for chunk in got.chunks] == expected
