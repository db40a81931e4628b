"""End-to-end scale benchmark: the real ``negminer mine`` command, default config, your own vectors.

What runs: ``negminer mine pairs.parquet --corpus corpus.parquet --out ROOT --name NAME
--config config.yaml`` as a subprocess, the command users run, with the DEFAULT pipeline
configuration (curation on, the default strategy, index ``auto``, Prefect's temporary server)
except for ``embed.anchor_vectors`` / ``embed.doc_vectors``, which name the precomputed vectors
(no model is loaded). Each run mines into a fresh ROOT (no work folder or cache of an earlier
run is reused) under ``PREFECT_HOME=bench/.cache/pipeline_scale/prefect-home`` (its own Prefect
database, not the one other runs on this machine use; it is created by the first run).

Inputs (synthetic, with topic structure like :mod:`bench.scale`): 384-d unit vectors made by
projecting sparse "documents" through a fixed random matrix. A doc has one of 2·√n_docs topics
(weight 2) and 8 words of a 20,000-word vocabulary; an anchor has its positive's topic, 4 of its
positive's words and 4 words of its own. Cosine anchor–positive is about 0.67, anchor–other doc
of its topic about 0.33, anything else about 0, so each anchor's neighbourhood is its topic and
its positive (a random doc, the same for anchors that draw the same one) ranks near the top. Two
docs in every 100 are planted copies of the doc before them, a duplicate (same words, same
vector) and a paraphrase (7 of 8 words), so anchors whose positive is one of them have known
false negatives and near-duplicates for the curation to flag. The texts are the same words
spelt out (pseudo-words made of syllables) plus the row's id, so every text is unique and the
text-based features (lexical overlap), the positive exclusion by normalised text and the
curation's checks have real texts to work on. Every row is a pure function of its index (a
counter-based hash, splitmix64), so generation streams: rows are made and written in chunks of
100,000 (Parquet row groups; the ``.npz`` members through a zip stream), and no texts exist as
Python lists (pyarrow builds the strings).

Vectors format: ``.npz`` with ``ids`` (fixed-width unicode) and ``vectors`` (float32, row-major),
stored uncompressed (``ZIP_STORED``) and written member by member through a zip stream. Of the
two formats every version of negminer's loader (:mod:`negminer.mining.precomputed`) accepts, it
is the one that is memory-mappable in principle (an uncompressed member is a plain ``.npy`` at
an offset) and needs no conversion; Parquet (``id`` + list ``embedding``) goes through an Arrow
table and a flatten. What the embed stage then costs in memory is the loader's business:
``write_vectors_for`` reads the members in batches.

Inputs are cached in ``bench/.cache/pipeline_scale/<anchors>x<docs>/`` (``pairs.parquet``,
``corpus.parquet``, ``anchor_vectors.npz``, ``doc_vectors.npz``, ``config.yaml``, and
``inputs.json`` written last); a rerun reuses them. 1M × 10M needs ~16 GB of inputs and as much
again in the run's work folder (``docs.npy``), plus the candidate tables.

What it measures, per run:

* **stage wall times**: the end of each stage is the modification time of the file it writes
  last (every write is atomic, so that is when it finished): ``.lock`` (the work folder is
  created when the flow starts: process start up to it = imports, config, Prefect's server,
  flow start), ``read.json``, ``embed.json``, ``index-*.json``, ``search-*.json``, then
  ``training-pairs.parquet`` (curate), ``pairs-scored.parquet`` (strategy), ``LATEST``
  (write) and the process's exit (audit-load + report + server shutdown). A stage's wall time
  is its end minus the previous stage's end, so Prefect's overhead between tasks is counted in
  the stage that follows it. ``own s`` is the ``seconds`` field of the stage's own marker (read,
  index, search; embed, curate and strategy keep none), the time inside the stage function. A
  killed run shows the stages that finished and the one it died in.
* **memory** (polled every 0.2 s from /proc): the negminer process's peak RSS (``VmHWM`` of
  ``/proc/PID/status``, the kernel's own high-water mark: no peak between two polls is missed,
  only growth after the last poll of a killed run, which ``ru_maxrss`` below covers;
  also its largest polled ``RssAnon``, i.e. without the file pages it maps); the process tree's peak RSS
  (the sum of ``VmRSS`` over negminer and all its descendants at each poll, max over polls; file
  pages mapped by two processes count twice); Prefect's temporary server (the ``uvicorn``
  child) separately (its ``VmHWM``); and ``ru_maxrss`` from ``wait4`` (the largest of negminer
  and its reaped children), which is exact even for a run killed between polls. Per stage: the
  largest polled ``VmRSS`` of negminer and of the tree between the previous stage's end and its
  own (a spike shorter than a poll can be missed there, never in ``VmHWM``).
* **rows**: from the version's ``manifest.json`` counts: pairs in, anchors, docs, rejects,
  candidates, triplet rows, negatives, anchors short, flagged by kind; and the share of ALL
  anchors that received their full number of negatives, counted in the version's
  ``candidates.parquet`` (anchors with ``num_negatives`` rows that hold a negative slot).
* **result**: ok, failed (exit code and negminer's last stderr line), killed (timeout) when
  ``--timeout`` ran out (the whole process group is killed with SIGKILL and the figures
  measured so far are printed), or killed (out of memory) when the process died of SIGKILL
  that this script did not send (the kernel's OOM killer; the system-wide ``oom_kill`` counter
  of /proc/vmstat is shown as evidence).

Several sizes in one call run one after another; the last lines compare each size with the
first (the smallest given first makes "x times" read as growth): ratio of anchors, docs, wall
time, time per anchor, and peak RSS.

Run: python -m bench.pipeline_scale --anchors 2000 --docs 20000
     python -m bench.pipeline_scale --anchors 10000 100000 --docs 100000 1000000
     python -m bench.pipeline_scale --preset 100k-1M 1M-1M --timeout 14400
     python -m bench.pipeline_scale --preset 1M-10M --resume   # continue a killed run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse

from bench.common import BENCH_CACHE

DIM = 384
WORDS = 20_000  # vocabulary of the doc/anchor words (bench.scale's `features`)
DOC_WORDS = 8
SHARED_WORDS = 4  # of the positive's words an anchor repeats
TOPIC_WEIGHT = 2.0
CHUNK = 100_000  # rows made and written at once
POLL_S = 0.2
PLANT_EVERY = 100  # 2 docs in every 100 are copies of the doc before them (planted_source)
GENERATOR = 2  # bump when the generated inputs change: cached inputs of another version are remade
CACHE = BENCH_CACHE / "pipeline_scale"
PRESETS = {
    "100k-1M": (100_000, 1_000_000),
    "300k-1M": (300_000, 1_000_000),
    "1M-1M": (1_000_000, 1_000_000),
    "1M-10M": (1_000_000, 10_000_000),
}
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# ----------------------------------------------------------------------------- synthetic inputs


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of each uint64 in `x` (a counter-based hash: row i's values need no other row)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


def _draw(rows: np.ndarray, salt: int, columns: int, modulo: int) -> np.ndarray:
    """(len(rows), columns) int64 in [0, modulo): a hash of (row, column, salt)."""
    keys = rows.astype(np.uint64)[:, None] * np.uint64(64) + np.arange(columns, dtype=np.uint64)[None, :]
    return (_mix(keys ^ np.uint64(salt * 0x5851F42D4C957F2D & 0xFFFFFFFFFFFFFFFF)) % np.uint64(modulo)).astype(np.int64)


@dataclass(frozen=True)
class World:
    """The synthetic population: n anchors, n docs, the topics, vocabulary and projection."""

    anchors: int
    docs: int
    topics: int
    vocabulary: pa.Array  # WORDS + topics pseudo-words
    projection: np.ndarray  # (WORDS + topics, DIM) float32

    @classmethod
    def make(cls, anchors: int, docs: int) -> World:
        topics = max(1, int(2 * np.sqrt(docs)))
        projection = np.random.default_rng(0).standard_normal((WORDS + topics, DIM)).astype(np.float32)
        return cls(anchors, docs, topics, _vocabulary(WORDS + topics), projection)

    def doc_words(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(words (m, DOC_WORDS), topic (m,)) of docs `rows`; see :func:`planted_source` for the copies."""
        source = planted_source(rows)
        words = _draw(source, 1, DOC_WORDS, WORDS)
        paraphrase = rows % PLANT_EVERY == PLANT_EVERY - 1
        words[paraphrase, -1] = _draw(rows[paraphrase], 5, 1, WORDS)[:, 0]
        return words, _draw(source, 2, 1, self.topics)[:, 0]

    def positive_of(self, anchor_rows: np.ndarray) -> np.ndarray:
        """The doc row that is each anchor's positive."""
        return _draw(anchor_rows, 3, 1, self.docs)[:, 0]

    def anchor_words(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(words (m, 2 * SHARED_WORDS), topic (m,)): its positive's topic and first words, plus its own."""
        words, topic = self.doc_words(self.positive_of(rows))
        own = _draw(rows, 4, DOC_WORDS - SHARED_WORDS, WORDS)
        return np.concatenate([words[:, :SHARED_WORDS], own], axis=1), topic

    def vectors(self, words: np.ndarray, topic: np.ndarray) -> np.ndarray:
        """(m, DIM) unit float32 vectors: the projection of the words (weight 1) and the topic (weight 2)."""
        m, k = words.shape
        cols = np.concatenate([words, WORDS + topic[:, None]], axis=1).reshape(-1)
        values = np.tile(np.r_[np.ones(k, np.float32), np.float32(TOPIC_WEIGHT)], m)
        indptr = np.arange(0, m * (k + 1) + 1, k + 1)
        sparse = scipy.sparse.csr_matrix((values, cols, indptr), shape=(m, len(self.projection)))
        vectors = np.asarray(sparse @ self.projection, np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    def text(self, words: np.ndarray, topic: np.ndarray, ids: pa.Array, *, question: bool) -> pa.Array:
        """The words spelt out: "<topic> w1 ... wk (<id>)", a question for anchors; built by pyarrow."""
        parts = [self.vocabulary.take(pa.array(WORDS + topic))]
        parts += [self.vocabulary.take(pa.array(words[:, j])) for j in range(words.shape[1])]
        if question:
            parts = [pa.scalar("what about"), *parts]
        return pc.binary_join_element_wise(*parts, pc.binary_join_element_wise("(", ids, ")", ""), " ")


def planted_source(rows: np.ndarray) -> np.ndarray:
    """The doc each doc copies its words from: itself, but for 2 in every PLANT_EVERY docs.

    Doc ``k·P + P-2`` is a duplicate of doc ``k·P + P-3`` (the same topic and words: the same
    vector, a text that differs by its id) and doc ``k·P + P-1`` a paraphrase of it (the same
    topic and 7 of its 8 words, cosine about 0.92). For an anchor whose positive is one of the
    three, the other two score about as high as its positive: planted false negatives and near
    duplicates for the curation to find.
    """
    offset = rows % PLANT_EVERY
    return rows - np.where(offset == PLANT_EVERY - 2, 1, 0) - np.where(offset == PLANT_EVERY - 1, 2, 0)


def _vocabulary(n: int) -> pa.Array:
    """n distinct pronounceable pseudo-words of three syllables (deterministic)."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    picks = np.random.default_rng(7).choice(len(syllables) ** 3, n, replace=False)
    s = len(syllables)
    return pa.array([syllables[p // s // s] + syllables[p // s % s] + syllables[p % s] for p in picks.tolist()])


def _ids(prefix: str, first: int, stop: int, width: int) -> np.ndarray:
    """Fixed-width unicode ids ``prefix`` + zero-padded row number, rows [first, stop)."""
    return np.char.add(prefix, np.char.zfill(np.arange(first, stop).astype(f"<U{width}"), width))


def _id_width(n: int) -> int:
    return max(6, len(str(max(n - 1, 0))))


class _NpzWriter:
    """An uncompressed .npz written member by member, each member chunk by chunk (never whole in memory)."""

    def __init__(self, path: Path) -> None:
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def member(self, name: str, dtype: np.dtype, shape: tuple[int, ...]):
        handle = self.zip.open(f"{name}.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(handle, header)
        return handle

    def close(self) -> None:
        self.zip.close()


def generate(folder: Path, anchors: int, docs: int, *, log=print) -> bool:
    """Write the inputs for `anchors` × `docs` into `folder`; False when ``inputs.json`` says they are there."""
    wanted = {"generator": GENERATOR, "anchors": anchors, "docs": docs, "dim": DIM}
    marker = folder / "inputs.json"
    if marker.exists() and json.loads(marker.read_text()).get("params") == wanted:
        return False
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    need = _input_bytes(anchors, docs)
    free = shutil.disk_usage(folder).free
    if free < need * 1.1:
        raise SystemExit(f"{folder}: the inputs need ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
    start = time.perf_counter()
    world = World.make(anchors, docs)
    a_width, d_width = _id_width(anchors), _id_width(docs)
    _write_docs(folder, world, d_width, log)
    _write_anchors(folder, world, a_width, d_width, log)
    seconds = round(time.perf_counter() - start, 1)
    marker.write_text(json.dumps({"params": wanted, "seconds": seconds, "topics": world.topics}, indent=2))
    return True


def write_config(folder: Path) -> Path:
    """The default configuration with the folder's vectors (rewritten each run: the cache may have moved)."""
    vectors = {"anchor_vectors": folder / "anchor_vectors.npz", "doc_vectors": folder / "doc_vectors.npz"}
    path = folder / "config.yaml"
    path.write_text(
        "# bench/pipeline_scale.py: the default configuration, with precomputed vectors\n"
        + "embed:\n"
        + "".join(f"  {key}: {json.dumps(str(value.resolve()))}\n" for key, value in vectors.items())
    )
    return path


def _write_docs(folder: Path, world: World, width: int, log) -> None:
    n = world.docs
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    npz = _NpzWriter(folder / "doc_vectors.npz.tmp")
    with pq.ParquetWriter(folder / "corpus.parquet.tmp", schema, compression="zstd") as corpus:
        ids_out = npz.member("ids", np.dtype(f"<U{width + 1}"), (n,))
        for first in range(0, n, CHUNK):
            ids = _ids("d", first, min(first + CHUNK, n), width)
            ids_out.write(ids.tobytes())
            words, topic = world.doc_words(np.arange(first, first + len(ids)))
            text = world.text(words, topic, pa.array(ids), question=False)
            corpus.write_table(pa.table({"id": pa.array(ids), "text": text}, schema=schema))
        ids_out.close()
        vectors_out = npz.member("vectors", np.dtype(np.float32), (n, DIM))
        for first in range(0, n, CHUNK):
            rows = np.arange(first, min(first + CHUNK, n))
            vectors_out.write(world.vectors(*world.doc_words(rows)).tobytes())
            if (first // CHUNK) % 10 == 9:
                log(f"  docs: {first + len(rows):,} of {n:,}")
        vectors_out.close()
    npz.close()
    os.replace(folder / "doc_vectors.npz.tmp", folder / "doc_vectors.npz")
    os.replace(folder / "corpus.parquet.tmp", folder / "corpus.parquet")


def _write_anchors(folder: Path, world: World, width: int, doc_width: int, log) -> None:
    n = world.anchors
    schema = pa.schema([(c, pa.string()) for c in ("anchor_id", "anchor", "positive_id", "positive")])
    npz = _NpzWriter(folder / "anchor_vectors.npz.tmp")
    with pq.ParquetWriter(folder / "pairs.parquet.tmp", schema, compression="zstd") as pairs:
        ids_out = npz.member("ids", np.dtype(f"<U{width + 1}"), (n,))
        for first in range(0, n, CHUNK):
            rows = np.arange(first, min(first + CHUNK, n))
            ids = _ids("a", first, first + len(rows), width)
            ids_out.write(ids.tobytes())
            positive = world.positive_of(rows)
            positive_ids = np.char.add("d", np.char.zfill(positive.astype(f"<U{doc_width}"), doc_width))
            anchor_text = world.text(*world.anchor_words(rows), pa.array(ids), question=True)
            positive_text = world.text(*world.doc_words(positive), pa.array(positive_ids), question=False)
            columns = [pa.array(ids), anchor_text, pa.array(positive_ids), positive_text]
            pairs.write_table(pa.Table.from_arrays(columns, schema=schema))
        ids_out.close()
        vectors_out = npz.member("vectors", np.dtype(np.float32), (n, DIM))
        for first in range(0, n, CHUNK):
            rows = np.arange(first, min(first + CHUNK, n))
            vectors_out.write(world.vectors(*world.anchor_words(rows)).tobytes())
            if (first // CHUNK) % 10 == 9:
                log(f"  anchors: {first + len(rows):,} of {n:,}")
        vectors_out.close()
    npz.close()
    os.replace(folder / "anchor_vectors.npz.tmp", folder / "anchor_vectors.npz")
    os.replace(folder / "pairs.parquet.tmp", folder / "pairs.parquet")


def _input_bytes(anchors: int, docs: int) -> int:
    """Rough disk the inputs take: float32 vectors, ids, compressed texts."""
    return (anchors + docs) * (DIM * 4 + 48) + (2 * anchors + docs) * 40


def _run_bytes(anchors: int, docs: int) -> int:
    """Rough disk a run takes: the vectors again (.npy) and ~10 tables of ~110 candidates per anchor."""
    return (anchors + docs) * DIM * 4 + anchors * 110 * 10 * 40 + (anchors + docs) * 200


# ----------------------------------------------------------------------------- process monitor


@dataclass
class Memory:
    """Peaks in bytes, over the polls of one run."""

    main_hwm: int = 0
    main_anon: int = 0
    tree: int = 0
    server_hwm: int = 0
    others: int = 0  # sum of RSS of children other than the server, max over polls
    ru_maxrss: int = 0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, negminer VmRSS, tree)
    children_seen: set[int] = field(default_factory=set)
    server_pids: set[int] = field(default_factory=set)


def _status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status we use, in bytes ({} when the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon"):
                    out[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return out


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (via /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as handle:
                    kids = [int(k) for k in handle.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            found += kids
            todo += kids
    return found


def _is_server(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"uvicorn" in cmdline and b"prefect" in cmdline


def _poll_memory(pid: int, memory: Memory, at: float) -> None:
    main = _status(pid)
    if not main:
        return
    memory.main_hwm = max(memory.main_hwm, main.get("VmHWM", 0))
    memory.main_anon = max(memory.main_anon, main.get("RssAnon", 0))
    tree, others = main.get("VmRSS", 0), 0
    for child in _children(pid):
        memory.children_seen.add(child)
        if child not in memory.server_pids and _is_server(child):  # read each poll: a fork execs later
            memory.server_pids.add(child)
        status = _status(child)
        tree += status.get("VmRSS", 0)
        if child in memory.server_pids:
            memory.server_hwm = max(memory.server_hwm, status.get("VmHWM", 0))
        else:
            others += status.get("VmRSS", 0)
    memory.tree = max(memory.tree, tree)
    memory.others = max(memory.others, others)
    memory.samples.append((at, main.get("VmRSS", 0), tree))


def _oom_kills() -> int | None:
    """The kernel's system-wide count of OOM kills (/proc/vmstat), None where unreadable."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Outcome:
    rc: int | None = None
    seconds: float = 0.0
    started: float = 0.0  # epoch seconds at the process's start
    timed_out: bool = False
    oom_before: int | None = None
    oom_after: int | None = None
    stdout: str = ""
    stderr_tail: list[str] = field(default_factory=list)
    memory: Memory = field(default_factory=Memory)


def run_cli(command: list[str], *, env: dict[str, str], timeout: float | None, log_path: Path, echo: bool) -> Outcome:
    """Run `command` in its own process group, polling memory every POLL_S s; kill it after `timeout` s."""
    outcome = Outcome(oom_before=_oom_kills())
    with open(log_path, "w") as log, open(log_path.with_suffix(".stdout"), "w+") as stdout:
        outcome.started = time.time()
        begin = time.monotonic()
        proc = subprocess.Popen(
            command, stdout=stdout, stderr=subprocess.PIPE, env=env, start_new_session=True, text=True, bufsize=1
        )
        reader = threading.Thread(target=_read_stderr, args=(proc, begin, log, outcome, echo), daemon=True)
        reader.start()
        while True:
            done, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if done == proc.pid:
                outcome.rc = os.waitstatus_to_exitcode(status)
                outcome.memory.ru_maxrss = usage.ru_maxrss * 1024
                proc.returncode = outcome.rc  # reaped here: Popen must not wait for it again
                break
            _poll_memory(proc.pid, outcome.memory, time.monotonic() - begin)
            if timeout is not None and not outcome.timed_out and time.monotonic() - begin > timeout:
                outcome.timed_out = True
                _kill_tree(proc.pid, outcome.memory, reaped=False)
            time.sleep(POLL_S)
        outcome.seconds = time.monotonic() - begin
        if outcome.timed_out or outcome.rc != 0:
            _kill_tree(proc.pid, outcome.memory, reaped=True)  # children left behind (the server) go too
        reader.join(timeout=10)
        stdout.seek(0)
        outcome.stdout = stdout.read()
    outcome.oom_after = _oom_kills()
    return outcome


def _read_stderr(proc: subprocess.Popen, begin: float, log, outcome: Outcome, echo: bool) -> None:
    for line in proc.stderr:
        stamped = f"[{time.monotonic() - begin:8.1f} s] {line.rstrip()}"
        log.write(stamped + "\n")
        log.flush()
        outcome.stderr_tail = [*outcome.stderr_tail[-19:], line.rstrip()]
        if echo:
            print("   " + stamped, file=sys.stderr, flush=True)


def _kill_tree(pid: int, memory: Memory, *, reaped: bool) -> None:
    """SIGKILL the run's process group (its leader `pid` started it with a new session).

    Before the leader is reaped its pid holds the group id; after, the group is signalled only
    while a process seen in it is still there (a group id in use cannot be reused; a pid seen
    earlier whose process has ended may belong to someone else by now).
    """
    members = []
    for child in memory.children_seen if reaped else ():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(child) == pid:
                members.append(child)
    if not reaped or members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- reading the run's folders

# (stage, the file it writes last, relative to the work folder ROOT/NAME/.work/KEY)
STAGES = (
    ("startup", ".lock"),  # the work folder is made when the flow starts
    ("read", "read.json"),
    ("embed", "embed.json"),
    ("index", "index-*.json"),
    ("search", "search-*.json"),
    ("curate", "training-pairs.parquet"),
    ("strategy", "pairs-scored.parquet"),
    ("write", "../../LATEST"),  # ROOT/NAME/LATEST: the version is published
)
OWN_SECONDS = ("read", "index", "search")  # stages whose marker holds its own "seconds"


@dataclass
class StageTime:
    name: str
    marker: str
    end: float | None  # seconds after the process started
    wall: float | None
    own: float | None
    reused: bool = False  # finished by an earlier run (--resume): its files are older than this one


def stage_times(root: Path, name: str, outcome: Outcome) -> list[StageTime]:
    """Each stage's end, wall and own seconds from the work folder's files (see the module docstring)."""
    works = sorted((root / name / ".work").glob("*/"), key=lambda p: p.stat().st_mtime) if root.exists() else []
    work = works[-1] if works else None
    out, previous = [], 0.0
    for stage, pattern in STAGES:
        end = own = None
        if work is not None:
            files = [root / name / "LATEST"] if pattern.endswith("LATEST") else list(work.glob(pattern))
            files = [p for p in files if p.exists()]
            if files:
                last = max(files, key=lambda p: p.stat().st_mtime)
                end = last.stat().st_mtime - outcome.started
                if stage in OWN_SECONDS:  # the merged marker is written after any shard's
                    own = json.loads(last.read_text()).get("seconds")
                if end < 0:
                    out.append(StageTime(stage, pattern.removeprefix("../../"), None, None, own, reused=True))
                    continue
        wall = None if end is None else end - previous
        out.append(StageTime(stage, pattern.removeprefix("../../"), end, wall, own))
        if end is not None:
            previous = end
    if out[-1].end is not None:
        out.append(StageTime("audit+report+exit", "process exit", outcome.seconds, outcome.seconds - previous, None))
    return out


def full_share(version: Path, num_negatives: int, anchors: int) -> tuple[int, int] | None:
    """(anchors with all their negatives, anchors) counted in the version's candidates.parquet."""
    path = version / "candidates.parquet"
    if not path.exists() or anchors == 0:
        return None
    schema = pq.read_schema(path)
    slot = next((c for c in ("slot", "negative_slot") if c in schema.names), None)
    if slot is None or "anchor_idx" not in schema.names:
        return None
    counts = np.zeros(anchors, np.int64)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1 << 20, columns=["anchor_idx", slot]):
        has = pc.is_valid(batch.column(1))
        if pa.types.is_integer(batch.column(1).type):
            has = pc.and_(has, pc.greater_equal(batch.column(1), 0))
        idx = batch.column(0).filter(has).to_numpy(zero_copy_only=False).astype(np.int64)
        counts += np.bincount(idx, minlength=anchors)[:anchors]
    return int((counts >= num_negatives).sum()), anchors


# ----------------------------------------------------------------------------- one size


@dataclass
class Result:
    anchors: int
    docs: int
    status: str
    wall: float
    memory: Memory
    counts: dict[str, Any]
    full: tuple[int, int] | None
    stages: list[StageTime]


def _gb(n: int) -> str:
    return f"{n / 1024**3:.2f}"


def _negminer() -> list[str]:
    script = Path(sys.executable).parent / "negminer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "negminer"]


def run_size(anchors: int, docs: int, args: argparse.Namespace) -> Result:
    label = f"{anchors:,} anchors × {docs:,} docs"
    print(f"\n== {label}", flush=True)
    folder = CACHE / f"{anchors}x{docs}"
    made = generate(folder, anchors, docs, log=lambda m: print(m, file=sys.stderr, flush=True))
    inputs = json.loads((folder / "inputs.json").read_text())
    how = f"made in {inputs['seconds']:.0f} s" if made else "cached"
    print(f"inputs: {folder} ({how}; {inputs['topics']:,} topics, .npz float32 vectors)", flush=True)

    root = folder / "run"
    if root.exists() and not args.resume:
        shutil.rmtree(root)
    root.mkdir(exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < _run_bytes(anchors, docs):
        print(f"warning: the run may need ~{_run_bytes(anchors, docs) / 1e9:.0f} GB, {free / 1e9:.0f} GB free")
    name = "scale"
    command = [
        *_negminer(),
        "mine",
        str(folder / "pairs.parquet"),
        "--corpus",
        str(folder / "corpus.parquet"),
        "--out",
        str(root),
        "--name",
        name,
        "--config",
        str(write_config(folder)),
    ]
    print("command: " + shlex.join(["negminer", *command[len(_negminer()) :]]).replace(str(folder) + "/", ""))
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(CACHE / "prefect-home"))
    if env.get("PREFECT_API_URL"):
        print(f"note: PREFECT_API_URL={env['PREFECT_API_URL']}: an external server, no temporary one")
    outcome = run_cli(command, env=env, timeout=args.timeout, log_path=folder / "last-run.log", echo=not args.quiet)

    status = _status_line(outcome)
    stages = stage_times(root, name, outcome)
    version = Path(outcome.stdout.strip().splitlines()[-1]) if outcome.rc == 0 and outcome.stdout.strip() else None
    manifest = json.loads((version / "manifest.json").read_text()) if version else {}
    counts = manifest.get("counts", {})
    num_negatives = (manifest.get("config", {}).get("mine") or {}).get("num_negatives") or 3
    full = full_share(version, num_negatives, counts.get("anchors", anchors)) if version else None
    _print_stages(stages, outcome)
    _print_memory(outcome.memory)
    _print_counts(counts, full, num_negatives)
    print(f"result: {status}; wall {outcome.seconds:.1f} s; log {folder / 'last-run.log'}", flush=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return Result(anchors, docs, status, outcome.seconds, outcome.memory, counts, full, stages)


def _status_line(outcome: Outcome) -> str:
    if outcome.timed_out:
        return f"killed (timeout after {outcome.seconds:.0f} s)"
    if outcome.rc == 0:
        return "ok"
    if outcome.rc == -signal.SIGKILL:  # not sent by this script: the kernel's OOM killer, as a rule
        evidence = ""
        if outcome.oom_before is not None and outcome.oom_after is not None:
            delta = outcome.oom_after - outcome.oom_before
            evidence = f"; /proc/vmstat oom_kill +{delta}" + ("" if delta else " (unchanged: SIGKILL from elsewhere?)")
        return f"killed (out of memory){evidence}"
    last = next((line for line in reversed(outcome.stderr_tail) if line.strip()), "")
    return f"failed (exit {outcome.rc}): {last}"


def _print_stages(stages: list[StageTime], outcome: Outcome) -> None:
    print(
        "| stage | wall s | own s | ends at s | end = mtime of | negminer RSS GB | tree RSS GB |\n"
        "|---|---:|---:|---:|---|---:|---:|"
    )
    samples, start = outcome.memory.samples, 0.0
    for stage in stages:
        if stage.reused:
            print(f"| {stage.name} | reused (finished by the earlier run) | | | {stage.marker} | - | - |")
            continue
        end = outcome.seconds if stage.end is None else stage.end
        during = [(m, t) for at, m, t in samples if start < at <= end]
        peak = f"{_gb(max(m for m, _ in during))} | {_gb(max(t for _, t in during))}" if during else "- | -"
        if stage.end is None:
            print(f"| {stage.name} | did not finish (the run ended at {outcome.seconds:.1f} s) | | | | {peak} |")
            break
        own = "" if stage.own is None else f"{stage.own:.1f}"
        print(f"| {stage.name} | {stage.wall:.1f} | {own} | {stage.end:.1f} | {stage.marker} | {peak} |")
        start = end
    print(
        f"| total | {outcome.seconds:.1f} | | | | {_gb(outcome.memory.main_hwm)} (VmHWM) | {_gb(outcome.memory.tree)} |"
    )


def _print_memory(memory: Memory) -> None:
    server = f"{_gb(memory.server_hwm)} GB" if memory.server_pids else "not seen"
    print(
        f"memory: negminer process peak RSS {_gb(memory.main_hwm)} GB "
        f"(VmHWM; peak RssAnon {_gb(memory.main_anon)} GB); "
        f"process tree peak {_gb(memory.tree)} GB (sum of VmRSS, max over {POLL_S} s polls: can miss what VmHWM "
        "catches); "
        f"Prefect server peak {server}; other children peak {_gb(memory.others)} GB; "
        f"wait4 ru_maxrss {_gb(memory.ru_maxrss)} GB",
        flush=True,
    )


def _print_counts(counts: dict[str, Any], full: tuple[int, int] | None, num_negatives: int) -> None:
    if not counts:
        print("rows: no manifest (the run did not publish a version)")
        return
    keys = ("pairs_in", "corpus_in", "rejected_rows", "anchors", "docs", "pairs", "candidates", "triplet_rows")
    shown = [f"{k} {counts[k]:,}" for k in (*keys, "negatives", "anchors_short") if isinstance(counts.get(k), int)]
    print("rows: " + ", ".join(shown))
    flagged = counts.get("flagged_by_kind") or {}
    curation = counts.get("curation") or {}
    acted = [f"{k} {curation[k]:,}" for k in ("negatives_excluded", "pairs_excluded") if k in curation]
    print("flagged: " + (", ".join(f"{k} {v:,}" for k, v in flagged.items()) or "nothing") + f" ({', '.join(acted)})")
    if full:
        print(f"anchors with all {num_negatives} negatives: {full[0] / full[1]:.1%} ({full[0]:,} of {full[1]:,})")
    else:
        print("anchors with all negatives: (candidates.parquet has no slot column)")


# ----------------------------------------------------------------------------- sizes and summary


def _sizes(args: argparse.Namespace) -> list[tuple[int, int]]:
    sizes = [PRESETS[p] for p in args.preset or []]
    if args.anchors or args.docs:
        anchors, docs = args.anchors or [], args.docs or []
        if not anchors or not docs:
            raise SystemExit("give --anchors and --docs together")
        if len(anchors) != len(docs) and 1 not in (len(anchors), len(docs)):
            raise SystemExit("--anchors and --docs take as many values, or one of them a single value")
        n = max(len(anchors), len(docs))
        anchors, docs = (anchors * n if len(anchors) == 1 else anchors), (docs * n if len(docs) == 1 else docs)
        sizes += list(zip(anchors, docs, strict=True))
    if not sizes:
        raise SystemExit("give --anchors N --docs M or --preset NAME")
    return sizes


def _size_count(value: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", value.replace(",", "").replace("_", ""))
    if not match:
        raise argparse.ArgumentTypeError(f"not a count: {value!r} (e.g. 100000, 100k, 1M)")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    number = int(float(match.group(1)) * scale)
    if number < 10:
        raise argparse.ArgumentTypeError(f"{value}: at least 10")
    return number


def _short(status: str) -> str:
    """ "failed (exit 1)" of "failed (exit 1): error: ...", "killed (out of memory)" of "...; /proc/vmstat ..."."""
    return status.split(";")[0].split(":")[0]


def _summary(results: list[Result]) -> None:
    print(
        "\n| anchors × docs | result | wall s | ms per anchor | negminer peak RSS GB | tree peak GB (polled) | "
        "server GB | triplet rows | full negatives |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for r in results:
        full = f"{r.full[0] / r.full[1]:.1%}" if r.full else "-"
        rows = r.counts.get("triplet_rows")
        print(
            f"| {r.anchors:,} × {r.docs:,} | {_short(r.status)} | {r.wall:.1f} | "
            f"{1000 * r.wall / r.anchors:.2f} | "
            f"{_gb(r.memory.main_hwm)} | {_gb(r.memory.tree)} | {_gb(r.memory.server_hwm)} | "
            f"{'-' if rows is None else f'{rows:,}'} | {full} |"
        )
    parts = []
    for r in results:
        full = f", {r.full[0] / r.full[1]:.1%} full" if r.full else ""
        parts.append(
            f"{r.anchors:,}×{r.docs:,} {_short(r.status)} {r.wall:.0f} s, "
            f"{_gb(r.memory.main_hwm)}/{_gb(r.memory.tree)} GB{full}"
        )
    base = results[0]
    for r in results[1:]:
        parts.append(
            f"{r.anchors:,}×{r.docs:,} / {base.anchors:,}×{base.docs:,}: anchors {r.anchors / base.anchors:.1f}x, "
            f"docs {r.docs / base.docs:.1f}x, wall {r.wall / base.wall:.2f}x, "
            f"time per anchor {(r.wall / r.anchors) / (base.wall / base.anchors):.2f}x, "
            f"negminer RSS {r.memory.main_hwm / max(base.memory.main_hwm, 1):.2f}x, "
            f"tree RSS {r.memory.tree / max(base.memory.tree, 1):.2f}x"
        )
    print("summary: " + "; ".join(parts) + " (RSS: negminer VmHWM / tree, polled)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchors", type=_size_count, nargs="+", help="anchor counts (100000, 100k, 1M)")
    parser.add_argument("--docs", type=_size_count, nargs="+", help="doc counts, one per --anchors value")
    parser.add_argument("--preset", nargs="+", choices=sorted(PRESETS), help="sizes named in the issue")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed")
    parser.add_argument("--keep", action="store_true", help="keep the run's output (ROOT) after it")
    parser.add_argument("--quiet", action="store_true", help="do not echo negminer's stderr as it runs")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run left in ROOT by a killed (or --keep) run: negminer reuses its finished stages, "
        "and the figures are those of this second part only",
    )
    args = parser.parse_args()
    sizes = _sizes(args)
    print(f"command: python -m bench.pipeline_scale {shlex.join(sys.argv[1:])}")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {memory:.0f} GB RAM")
    results = [run_size(anchors, docs, args) for anchors, docs in sizes]
    _summary(results)


if __name__ == "__main__":
    main()
