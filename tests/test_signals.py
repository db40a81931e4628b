"""Stopping and killing a real `negminer mine` process.

A stop (SIGTERM or SIGINT to the run's process group, as ``timeout``, systemd, Kubernetes and
``docker stop`` send it) ends the run within 10 s with exit code 128 + the signal, one line
naming the signal last on stderr, no version published and no process of the group left; the
next run resumes. A kill (SIGKILL to negminer alone, as the OOM killer sends it) takes its
temporary Prefect server with it.

The stopped run gets a test-only ``sitecustomize`` (on its PYTHONPATH, never in the package)
that sleeps after each stored embedding shard, so the signal lands inside embedding.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NAME = "stopped"
STOP_LIMIT_S = 10.0
SLOW_EMBED_HOOK = """\
import os
import time

if os.environ.get("NEGMINER_TEST_SLOW_EMBED"):
    from negminer.storage import embedding_store

    _add = embedding_store.EmbeddingStore.add

    def _slow_add(self, *args, **kwargs):
        _add(self, *args, **kwargs)
        time.sleep(1.0)

    embedding_store.EmbeddingStore.add = _slow_add
"""


@pytest.fixture(scope="module")
def setup(tiny_inputs: dict[str, Path], tmp_path_factory) -> dict:
    """The tiny inputs, 16-text embedding shards, a private PREFECT_HOME, the slowing hook."""
    folder = tmp_path_factory.mktemp("signals")
    (folder / "config.yaml").write_text("embed:\n  max_seq_length: 64\n  chunk_size: 16\nmine:\n  num_negatives: 2\n")
    (folder / "hook").mkdir()
    (folder / "hook" / "sitecustomize.py").write_text(SLOW_EMBED_HOOK)
    env = {**os.environ, "PREFECT_HOME": str(folder / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    return {"folder": folder, "env": env, "inputs": tiny_inputs}


def mine_command(setup: dict, out: Path) -> list[str]:
    inputs = setup["inputs"]
    return [
        *(sys.executable, "-m", "negminer", "mine", str(inputs["pairs40"])),
        *("--corpus", str(inputs["corpus"]), "--out", str(out), "--name", NAME),
        *("--config", str(setup["folder"] / "config.yaml")),
    ]


def start_slowed(setup: dict, out: Path) -> tuple[subprocess.Popen, Path]:
    """`negminer mine` slowed in embedding, in a session (process group) of its own; its stderr file."""
    env = {
        **setup["env"],
        "NEGMINER_TEST_SLOW_EMBED": "1",
        "PYTHONPATH": os.pathsep.join([str(setup["folder"] / "hook"), setup["env"].get("PYTHONPATH", "")]),
    }
    stderr = out.with_suffix(".stderr")
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            mine_command(setup, out),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    return proc, stderr


def wait_for(proc: subprocess.Popen, reached, what: str, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not reached():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc.pid)
            pytest.fail(f"the run ended before {what}: {log.read_text()[-3000:]}")
        time.sleep(0.05)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def store_shards(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / ".embeddings").glob("*/shard-*.keys.npy")}


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, pgrp, ...), or None when gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def group_members(pgid: int) -> list[str]:
    """'PID STATE CMDLINE' of every process (zombies included) in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) and int(stat[2]) == pgid:
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmdline = "?"
            members.append(f"{entry.name} {stat[0]} {cmdline[:200]}")
    return members


def server_children(pid: int) -> list[int]:
    """Prefect temporary servers (uvicorn serving prefect.server) whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) and int(stat[1]) == pid:
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"uvicorn" in cmdline and b"prefect.server" in cmdline:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (an orphan's zombie is init's to reap, not ours)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def assert_nothing_published(out: Path) -> None:
    dataset = out / NAME
    assert not (dataset / "LATEST").exists()
    assert not list(dataset.glob("v[0-9]*"))


def stop_mid_run(setup: dict, out: Path, signum: signal.Signals, *, group: bool) -> list[str]:
    """Start the slowed run, send `signum` (to its group, or to it alone) once it is embedding, and
    check it ended in time, with 128 + signum, the signal named last on stderr, no process of its
    group left (the temporary server stopped and reaped: no zombie either) and nothing published.
    Returns its stderr lines."""
    proc, stderr = start_slowed(setup, out)
    try:
        wait_for(proc, lambda: bool(store_shards(out)), "the first stored embedding shard", stderr)
        (os.killpg if group else os.kill)(proc.pid, signum)
        sent = time.monotonic()
        try:
            proc.wait(timeout=STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            members = group_members(proc.pid)
            pytest.fail(f"still running {STOP_LIMIT_S} s after {signum.name}: {members}\n{stderr.read_text()[-3000:]}")
        took = time.monotonic() - sent
        left = group_members(proc.pid)
    finally:
        kill_group(proc.pid)
        proc.wait()

    print(f"{signum.name} to the {'group' if group else 'process'}: exited {took:.2f} s after it")
    lines = stderr.read_text().strip().splitlines()
    assert proc.returncode == 128 + signum, (proc.returncode, lines[-20:])
    assert lines and signum.name in lines[-1], lines[-20:]
    assert took < STOP_LIMIT_S
    assert left == [], left
    assert_nothing_published(out)
    return lines


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.extended)], ids=["SIGTERM", "SIGINT"]
)
def test_a_stopped_run_exits_promptly_publishes_nothing_and_resumes(setup: dict, signum: signal.Signals) -> None:
    out = setup["folder"] / f"stopped-{signum.name}"
    stop_mid_run(setup, out, signum, group=True)
    finished = store_shards(out)
    assert finished

    rerun = subprocess.run(mine_command(setup, out), env=setup["env"], capture_output=True, text=True, timeout=600)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert Path(rerun.stdout.strip().splitlines()[-1]) == out / NAME / "v0001"
    after = store_shards(out)
    assert all(after[p] == mtime for p, mtime in finished.items())  # the stopped run's shards were reused


def test_a_signal_to_the_process_alone_stops_its_server_too(setup: dict) -> None:
    """`kill PID`: the temporary server gets no signal of its own; negminer stops and reaps it."""
    stop_mid_run(setup, setup["folder"] / "stopped-alone", signal.SIGTERM, group=False)


def test_a_killed_run_takes_its_temporary_server_with_it(setup: dict) -> None:
    out = setup["folder"] / "killed"
    proc, stderr = start_slowed(setup, out)
    try:
        wait_for(proc, lambda: bool(store_shards(out)), "the first stored embedding shard", stderr)
        servers = server_children(proc.pid)
        assert len(servers) == 1, group_members(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # negminer only, as the OOM killer does: not its group
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while running(servers[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(servers[0]), group_members(proc.pid)
    finally:
        kill_group(proc.pid)
        proc.wait()


def test_a_stop_waits_for_a_publish_in_progress(tmp_path: Path) -> None:
    """The stop takes the dataset's publish lock before it exits: a version being renamed into
    place and made LATEST (under that lock) is finished first, never left half published."""
    from negminer.flows.stopping import wait_for_publish
    from negminer.storage.versions import dataset_lock

    dataset = tmp_path / NAME
    dataset.mkdir()
    held, released = threading.Event(), []

    def publish() -> None:
        with dataset_lock(dataset):
            held.set()
            time.sleep(0.5)
            released.append(time.monotonic())

    writer = threading.Thread(target=publish)
    writer.start()
    held.wait()
    release = wait_for_publish(dataset, timeout=5.0)
    got = time.monotonic()
    writer.join()
    assert release is not None and released and got >= released[0]
    release()


def test_a_stop_does_not_wait_forever_for_a_publish(tmp_path: Path) -> None:
    from negminer.flows.stopping import wait_for_publish
    from negminer.storage.versions import dataset_lock

    dataset = tmp_path / NAME
    dataset.mkdir()
    done = threading.Event()

    def hold() -> None:
        with dataset_lock(dataset):
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        time.sleep(0.1)
        start = time.monotonic()
        assert wait_for_publish(dataset, timeout=0.3) is None
        assert time.monotonic() - start < 2
    finally:
        done.set()
        holder.join()
