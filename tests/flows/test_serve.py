"""`negminer serve`: deployment parameters from the YAML file, and a real `prefect server start`
that creates the scheduled runs of the served deployment."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from negminer.config import PipelineConfig
from negminer.errors import ConfigError

NIGHTLY = """\
run:
  pairs: data/pairs.parquet
  corpus: data/corpus.parquet
  out: datasets
  name: nightly
embed:
  max_seq_length: 64
mine:
  num_negatives: 2
"""


def test_parameters_resolve_paths_against_the_config_folder(tmp_path: Path) -> None:
    from negminer.flows.serve import deployment_parameters

    (tmp_path / "nightly.yaml").write_text(NIGHTLY)
    config = PipelineConfig.from_yaml(tmp_path / "nightly.yaml")
    params = deployment_parameters(config, base=tmp_path)
    assert params["pairs"] == str(tmp_path / "data" / "pairs.parquet")
    assert params["out"] == str(tmp_path / "datasets") and params["name"] == "nightly"
    assert params["store"] is None
    assert PipelineConfig.model_validate(params["config"]).mine.num_negatives == 2
    assert params["config"]["run"]["corpus"] == str(tmp_path / "data" / "corpus.parquet")


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from negminer.flows.serve import cron_schedule, deployment_parameters

    with pytest.raises(ConfigError, match=r"^run: "):
        deployment_parameters(PipelineConfig(), base=tmp_path)
    with pytest.raises(ConfigError, match=r"^--cron: "):
        cron_schedule(PipelineConfig(), cron="0 3 * *", timezone=None)
    with pytest.raises(ConfigError, match=r"^schedule.cron: "):
        cron_schedule(PipelineConfig(), cron=None, timezone=None)
    bad = tmp_path / "bad.yaml"
    bad.write_text(NIGHTLY + "schedule:\n  crn: '0 3 * * *'\n")
    with pytest.raises(ConfigError, match=r"schedule.crn"):
        PipelineConfig.from_yaml(bad)
    schedule = cron_schedule(PipelineConfig.from_dict({"schedule": {"cron": "0 3 * * *"}}), cron=None, timezone=None)
    assert schedule.cron == "0 3 * * *"


def test_a_bad_timezone_names_the_timezone_key() -> None:
    from negminer.flows.serve import cron_schedule

    config = PipelineConfig.from_dict({"schedule": {"cron": "0 3 * * *", "timezone": "Europe/Berln"}})
    with pytest.raises(ConfigError, match=r"^schedule.timezone: .*Europe/Berln"):
        cron_schedule(config, cron=None, timezone=None)
    with pytest.raises(ConfigError, match=r"^--timezone: .*Mars/Base"):
        cron_schedule(config, cron="0 4 * * *", timezone="Mars/Base")


def test_a_dataset_name_every_run_would_refuse_is_refused_when_serving(tmp_path: Path) -> None:
    from negminer.flows.serve import deployment_parameters

    (tmp_path / "nightly.yaml").write_text(NIGHTLY.replace("name: nightly", "name: nightly data"))
    with pytest.raises(ConfigError, match="dataset name 'nightly data'"):
        deployment_parameters(PipelineConfig.from_yaml(tmp_path / "nightly.yaml"), base=tmp_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen, *, timeout: float = 30) -> None:
    """SIGTERM the process we started, then SIGKILL its process group if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)


def wait_for(check, *, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        if result := check():
            return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`prefect server start` on a free loopback port, stopped by its PID afterwards."""
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    }
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=180, what="prefect server health", proc=server)
        yield api, {**env, "PREFECT_API_URL": api}
    finally:
        stop(server)
        log.close()
    assert server.poll() is not None


@pytest.mark.flow
@pytest.mark.slow
def test_serve_creates_scheduled_runs(prefect_server, tmp_path: Path) -> None:
    import httpx

    api, env = prefect_server
    (tmp_path / "nightly.yaml").write_text(NIGHTLY)
    log = (tmp_path / "serve.log").open("w")
    served = subprocess.Popen(
        [sys.executable, "-m", "negminer", "serve", "--config", str(tmp_path / "nightly.yaml"), "--cron", "0 3 * * *"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def deployment() -> dict | None:
        found = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
        return next((d for d in found if d["name"] == "nightly"), None)

    def scheduled_runs() -> list[dict]:
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        return [r for r in runs if r["deployment_id"] == deployed["id"] and r["state_type"] == "SCHEDULED"]

    try:
        deployed = wait_for(deployment, timeout=180, what="the deployment", proc=served)
        runs = wait_for(scheduled_runs, timeout=120, what="a scheduled run", proc=served)
    finally:
        stop(served)
        log.close()
    assert [s["schedule"]["cron"] for s in deployed["schedules"]] == ["0 3 * * *"]
    assert deployed["parameters"]["out"] == str(tmp_path / "datasets")
    assert deployed["parameters"]["config"]["mine"]["num_negatives"] == 2
    assert all(r["expected_start_time"][11:16] == "03:00" for r in runs)
    assert deployment()["paused"] is False  # pause_on_shutdown=False: the schedule survives a restart
