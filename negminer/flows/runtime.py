"""Where the mine flow's tasks run: Prefect's temporary server (at the lowest CPU priority) and Dask.

:func:`start_temporary_server` starts the server a flow of this process would start, bound to
this process's life; :func:`shared_api` points task runs in other processes (Dask workers) at
it; :func:`dask_task_runner` is prefect-dask's runner for a scheduler or a LocalCluster.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from prefect.task_runners import TaskRunner

from negminer.errors import ConfigError
from negminer.flows import stopping


def dask_task_runner(*, address: str | None = None, workers: int | None = None) -> TaskRunner:
    """prefect-dask's DaskTaskRunner: the scheduler at `address`, or a LocalCluster of `workers` processes.

    The mapped shard tasks (embedding, index, search, curation, selection) then run on the Dask
    workers, each loading the model once in its own process. Workers must see the same
    filesystem as the flow (the run's work folder and the embedding store) and run with
    negminer installed.

    Example:
        >>> runner = dask_task_runner(workers=2)  # doctest: +SKIP
    """
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as err:
        raise ConfigError("Dask needs prefect-dask: pip install 'negminer[dask]'") from err
    if address:
        return DaskTaskRunner(address=address)
    if workers is None or workers < 1:
        raise ConfigError(f"dask workers must be >= 1, got {workers}")
    # One thread per worker: each worker embeds with its own torch threads (Dask sets OMP_NUM_THREADS=1).
    cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    return DaskTaskRunner(cluster_kwargs=cluster)


def start_temporary_server() -> Any | None:
    """Start the temporary Prefect server this process's flows would start, at the lowest CPU priority.

    Returns the server (Prefect's per-process instance, which its client then uses), or None
    when ``PREFECT_API_URL`` names a server. Idle, Prefect's temporary server still wakes
    about 180 times a second (its event loop, services and database threads); at normal
    priority those wakeups take cores from the forward pass's threads, which then wait for
    each other: on the 2-core box a plain encode ran 5.7% slower beside it, 1% at nice 19
    (docs/benchmarks.md). Its requests are few and small, so the lowest priority costs the
    flow nothing measurable.

    The server is started with a parent-death signal (:func:`stopping.start_bound_server`):
    killed with this process, whatever kills it (SIGKILL, the OOM killer), so no orphan server
    is left behind. Each server takes a free port of its own, so a stale one never hinders the next.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's client starts for this process
    if not getattr(server, "running", False):  # killed with negminer, whatever kills it (flows/stopping.py)
        server._run_uvicorn_command = lambda: stopping.start_bound_server(server)
    server.start()
    process = getattr(server, "server_process", None)
    if process is not None:
        lower_cpu_priority(process.pid)
    return server


def lower_cpu_priority(pid: int, niceness: int = 19) -> None:
    """Set every thread of process `pid` to `niceness` (Linux: per thread; elsewhere the process, if possible)."""
    if not hasattr(os, "setpriority"):
        return
    tasks = Path(f"/proc/{pid}/task")
    ids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [pid]
    for tid in ids:
        with suppress(OSError):  # a thread that just ended, or no permission
            os.setpriority(os.PRIO_PROCESS, tid, niceness)


@contextmanager
def shared_api() -> Iterator[None]:
    """Point task runs in other processes at this process's Prefect API.

    Without ``PREFECT_API_URL`` every Dask worker would start a temporary server of its own;
    instead the temporary server Prefect starts for this process is named in the settings,
    which prefect-dask sends along with every task.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = start_temporary_server()
    if server is None:
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield
