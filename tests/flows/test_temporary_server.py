"""Prefect's temporary server runs at the lowest CPU priority, so it does not slow the forward pass."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from negminer.flows.runtime import lower_cpu_priority, start_temporary_server

linux_only = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread niceness from /proc")


def thread_niceness(pid: int) -> list[int]:
    # field 19 of /proc/PID/task/TID/stat is the niceness; the name before it may hold spaces
    return [
        int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]) for task in Path(f"/proc/{pid}/task").iterdir()
    ]


@linux_only
def test_every_thread_of_the_process_is_lowered() -> None:
    code = "import threading, time\nfor _ in range(2): threading.Thread(target=time.sleep, args=(60,)).start()\n"
    code += "time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while len(list(Path(f"/proc/{child.pid}/task").iterdir())) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        lower_cpu_priority(child.pid)
        assert thread_niceness(child.pid) == [19, 19, 19]
    finally:
        child.kill()
        child.wait()


def test_a_named_server_is_left_alone() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://server:4200/api"}):
        assert start_temporary_server() is None


@linux_only
@pytest.mark.slow
def test_flows_use_the_lowered_temporary_server(tmp_path) -> None:
    script = textwrap.dedent(
        """
        from pathlib import Path
        from prefect import flow, get_client
        from negminer.flows.runtime import start_temporary_server

        server = start_temporary_server()
        nice = [int((t / "stat").read_text().rsplit(")", 1)[1].split()[16])
                for t in Path(f"/proc/{server.server_process.pid}/task").iterdir()]

        @flow
        def answer() -> int:
            return 42

        assert answer() == 42
        with get_client(sync_client=True) as client:
            print(set(nice), str(client.api_url).rstrip("/") == server.api_url.rstrip("/"))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "{19} True"
