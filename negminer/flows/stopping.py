"""How a `negminer mine` process ends when it is stopped or killed.

Stopped (SIGTERM or SIGINT, to the process or its group: ``timeout``, systemd, Kubernetes,
``docker stop``, Prefect workers, Ctrl-C): :func:`exit_on_signals` handles the signal in the
main thread while the flow runs on a worker thread (:func:`call_stoppable`), so Prefect's own
SIGTERM handling (which raises inside the flow and then retries the API of a server that the
same signal stopped) never runs. The handler takes the dataset's publish lock (a version
being renamed into place and made LATEST is finished first, never left half published; a
version still being staged is abandoned and its staging folder removed by the next run),
stops and reaps every child process (the temporary Prefect server, encoding processes, a
local Dask cluster), writes one line on stderr and leaves with ``os._exit(128 + signal)``:
no interpreter shutdown, so Prefect's exit handlers (its event queue drain) cannot hang it.
The work folder's lock is an ``flock``, released by the kernel when the process ends, and
every stage's completion marker is written atomically: the next identical run resumes.

Killed (SIGKILL, the OOM killer): nothing runs in the process, so the temporary server is
started with a parent-death signal (Linux ``PR_SET_PDEATHSIG``, :func:`start_bound_server`):
the kernel kills it when negminer ends, whatever ends it. The kernel sends that signal when
the *thread* that started the child ends, so the server is started from a thread that lasts
as long as the process (:func:`on_lasting_thread`).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Bounds of the cleanup after a stop signal, at most max(PUBLISH_WAIT_S, CHILD_GRACE_S) +
# KILL_WAIT_S = 4 s (docker, systemd and Kubernetes wait 10 s or more before SIGKILL): child
# processes get CHILD_GRACE_S after SIGTERM (the temporary server's graceful shutdown takes
# over 4 s on a busy machine and buys nothing: it is killed then), then SIGKILL and
# KILL_WAIT_S to go; meanwhile a publish under way gets PUBLISH_WAIT_S to finish its rename
# and LATEST (milliseconds; longer only while another process, a gc, holds the dataset lock).
PUBLISH_WAIT_S = 3.0
CHILD_GRACE_S = 2.0
KILL_WAIT_S = 1.0
# What the kernel sends the temporary server when negminer ends: nothing in it is worth a
# graceful shutdown once its only client is gone (SQLite survives a kill).
PARENT_DEATH_SIGNAL = signal.SIGKILL
_PR_SET_PDEATHSIG = 1

_state: dict[str, Any] = {"armed": False, "stopping": False}


@contextlib.contextmanager
def exit_on_signals(dataset_dir: str | Path, *, notice: str) -> Iterator[None]:
    """End the process promptly and cleanly on SIGTERM or SIGINT while the block runs.

    Args:
        dataset_dir: ``ROOT/NAME`` of the run, whose publish lock the stop waits for.
        notice: the line written on stderr on a stop; ``{signal}`` becomes the signal's name.

    Outside the main thread (signals are only handled there) the block runs unguarded. The
    previous handlers are restored after the block.

    Example:
        >>> with exit_on_signals("datasets/scifact", notice="stopped by {signal}"):  # doctest: +SKIP
        ...     call_stoppable(run)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if _state["stopping"]:  # a second signal during the cleanup: it is already bounded
            return
        _state["stopping"] = True
        stop_process(signal.Signals(signum), dataset_dir=Path(dataset_dir), notice=notice)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    _state["armed"] = True
    try:
        yield
    finally:
        _state["armed"] = False
        for signum, old in previous.items():
            signal.signal(signum, old)


def call_stoppable(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; on a worker thread while :func:`exit_on_signals` guards the main thread.

    The main thread only waits, so a stop signal is handled at once, whatever the work is doing
    (a long native call included), and Prefect, which installs its SIGTERM handler only in the
    main thread, leaves the signal to :func:`exit_on_signals`. The worker runs in a copy of the
    caller's context (Prefect's settings and run contexts are context variables). Its result
    or exception comes back here. Unguarded, `fn` runs here as a plain call.
    """
    if not _state["armed"] or threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    outcome: Future[T] = Future()
    context = contextvars.copy_context()

    def work() -> None:
        try:
            outcome.set_result(context.run(fn, *args, **kwargs))
        except BaseException as err:  # handed to the caller, re-raised there
            outcome.set_exception(err)

    worker = threading.Thread(target=work, name="negminer-run", daemon=True)
    worker.start()
    return outcome.result()  # waits interruptibly: the signal handler runs in this thread


def stop_process(signum: signal.Signals, *, dataset_dir: Path | None, notice: str) -> None:
    """Wait for a publish under way, stop every child process, write `notice` and ``os._exit(128 + signum)``."""
    started = time.monotonic()
    logging.disable(logging.CRITICAL)
    # Our stderr for the notice; every other writer (Prefect's log threads, warnings) now writes
    # to /dev/null, so the notice is the last line.
    stderr = os.dup(2)
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    with contextlib.suppress(Exception):  # nothing may keep the process from exiting
        publish = None if dataset_dir is None else lambda: wait_for_publish(dataset_dir, timeout=PUBLISH_WAIT_S)
        end_child_processes(grace=CHILD_GRACE_S, kill_wait=KILL_WAIT_S, meanwhile=publish)
    line = notice.format(signal=signum.name, seconds=time.monotonic() - started)
    with contextlib.suppress(OSError):
        os.write(stderr, f"{line}\n".encode())
    os._exit(128 + signum)


def wait_for_publish(dataset_dir: str | Path, *, timeout: float) -> Callable[[], None] | None:
    """Take the publish lock of `dataset_dir`, waiting at most `timeout` s for a publish that holds it.

    Publishing renames a complete staging folder into place and replaces ``LATEST`` under this
    lock (:func:`negminer.storage.versions.dataset_lock`); once it is ours, no publish of this
    process is half done, and none can start. Returns a function that releases it (a stopping
    process never calls it: the kernel releases it at exit), or None when `timeout` passed.
    The folder is made when missing, so a publish cannot start in it unseen.
    """
    from negminer.storage.versions import dataset_lock

    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            Path(dataset_dir).mkdir(parents=True, exist_ok=True)
            with dataset_lock(dataset_dir):
                taken.set()
                release.wait()
        except OSError as err:  # no folder can be made there: nothing can be published there either
            logger.debug("publish lock of %s not taken (%s)", dataset_dir, err)
            taken.set()

    threading.Thread(target=hold, name="negminer-stop-publish-lock", daemon=True).start()
    return release.set if taken.wait(timeout) else None


def end_child_processes(*, grace: float, kill_wait: float, meanwhile: Callable[[], object] | None = None) -> list[int]:
    """SIGTERM every descendant of this process, SIGKILL those left after `grace` s; reap the children.

    `meanwhile` runs right after the SIGTERMs (its time counts in `grace`). Returns the pids of
    those still there `kill_wait` s after the SIGKILLs (normally none).
    """
    me = os.getpid()
    family = descendants(me)
    for pid in family:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    if meanwhile is not None:
        meanwhile()
    while (left := _alive(family, me)) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in left:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + kill_wait
    while (left := _alive(left, me)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children first), from /proc; empty where there is no /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(0), [])
        found += children
        todo += children
    return found


def _alive(pids: list[int], me: int) -> list[int]:
    """Those of `pids` still running; our own children that ended are reaped (no zombie left)."""
    left = []
    for pid in pids:
        stat = _stat(pid)
        if stat is None:
            continue
        if int(stat[1]) == me:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    continue
            left.append(pid)
        elif stat[0] != "Z":  # a grandchild's zombie is its parent's (or init's) to reap
            left.append(pid)
    return left


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, ...]; None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def parent_death_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get :data:`PARENT_DEATH_SIGNAL` when this process ends.

    None where the kernel has no parent-death signal (not Linux, or no libc found).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError as err:
        logger.warning("no parent-death signal for the temporary server (%s)", err)
        return None
    prctl, parent = libc.prctl, os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0) != 0:
            return  # an old kernel: the child merely outlives a killed parent, as before
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


_lasting: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
_lasting_lock = threading.Lock()
_lasting_thread: list[threading.Thread] = []


def on_lasting_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a daemon thread that lasts as long as the process, in a copy of the caller's context.

    A parent-death signal fires when the thread that started the child ends: children that
    must live as long as the process (the temporary server) are started there. Daemon threads
    are neither joined nor stopped at interpreter exit, unlike a ThreadPoolExecutor's.
    """
    with _lasting_lock:
        if not _lasting_thread:
            thread = threading.Thread(target=_serve_lasting, name="negminer-child-starter", daemon=True)
            thread.start()
            _lasting_thread.append(thread)
    if threading.current_thread() is _lasting_thread[0]:
        return fn()
    outcome: Future[T] = Future()
    context = contextvars.copy_context()
    _lasting.put((lambda: context.run(fn), outcome))
    return outcome.result()


def _serve_lasting() -> None:
    while True:
        fn, outcome = _lasting.get()
        try:
            outcome.set_result(fn())
        except BaseException as err:  # handed to the caller, re-raised there
            outcome.set_exception(err)


def start_bound_server(server: Any) -> subprocess.Popen[Any]:
    """Start Prefect's temporary server process for `server` (a ``SubprocessASGIServer``), bound to this process.

    Prefect 3.8's ``SubprocessASGIServer._run_uvicorn_command``, with a parent-death signal
    (:func:`parent_death_preexec`), started from :func:`on_lasting_thread`. It replaces that
    method on the instance, so the retry Prefect makes on a taken port is bound too.
    """
    import prefect
    from prefect.settings import get_current_settings

    def popen() -> subprocess.Popen[Any]:
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",  # as Prefect sets them for its temporary server
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        args = [
            *(sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent)),
            *("--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(server.port)),
            *("--log-level", "error", "--lifespan", "on"),
        ]
        return subprocess.Popen(args, env=env, preexec_fn=parent_death_preexec())

    return on_lasting_thread(popen)
