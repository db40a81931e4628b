"""``negminer serve``: the mine flow as a Prefect deployment on a cron schedule, served here.

The YAML file is the deployment: its pipeline sections are the ``config`` parameter, its
``run`` section the input and output paths (relative ones resolved against the file's folder),
its ``schedule`` section the default cron string. Schedules need a Prefect server with its
scheduler (``prefect server start``; set ``PREFECT_API_URL``): the temporary server that a
plain ``negminer mine`` starts has none.
"""

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from negminer.config import PipelineConfig, RunConfig
from negminer.errors import ConfigError
from negminer.storage.versions import check_dataset_name


def deployment_parameters(config: PipelineConfig, *, base: Path) -> dict[str, Any]:
    """The mine flow's parameters for `config`: paths from its ``run`` section, made absolute."""
    if config.run is None:
        raise ConfigError("run: section required to serve (pairs, out, name; optional corpus, store)")
    check_dataset_name(config.run.name)  # every scheduled run would fail on it otherwise
    run = RunConfig(**{k: _absolute(v, base) if k != "name" else v for k, v in config.run.model_dump().items()})
    resolved = config.model_copy(update={"run": run})
    return {
        "pairs": run.pairs,
        "out": run.out,
        "name": run.name,
        "corpus": run.corpus,
        "store": run.store,
        "config": resolved.model_dump(mode="json"),
    }


def _absolute(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def cron_schedule(config: PipelineConfig, *, cron: str | None, timezone: str | None) -> Any:
    """A Prefect cron schedule from ``--cron``/``--timezone`` or the ``schedule`` section."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron

    section = config.schedule
    cron_key = "--cron" if cron else "schedule.cron"
    timezone_key = "--timezone" if timezone else "schedule.timezone"
    cron = cron or (section.cron if section else None)
    timezone = timezone or (section.timezone if section else None)
    if not cron:
        raise ConfigError("schedule.cron: no cron string; pass --cron (e.g. --cron '0 3 * * *')")
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as err:
        first = err.errors()[0]
        key = timezone_key if "timezone" in first["loc"] else cron_key
        raise ConfigError(f"{key}: {first['msg']}") from err
    return Cron(cron, timezone=timezone)


def serve_mine(
    config_path: str | Path,
    *,
    cron: str | None = None,
    timezone: str | None = None,
    deployment: str | None = None,
) -> None:
    """Create (or update) the deployment and serve it until interrupted (SIGINT/SIGTERM).

    The schedule stays active when the server stops (``pause_on_shutdown=False``), so the
    next ``negminer serve`` picks up the runs that came due meanwhile.

    Example:
        >>> serve_mine("nightly.yaml", cron="0 3 * * *")  # doctest: +SKIP
    """
    from prefect.deployments.runner import EntrypointType

    from negminer.flows.mine import mine_flow

    config_path = Path(config_path)
    config = PipelineConfig.from_yaml(config_path)
    parameters = deployment_parameters(config, base=config_path.resolve().parent)
    schedule = cron_schedule(config, cron=cron, timezone=timezone)
    mine_flow.serve(
        name=deployment or (config.schedule.deployment if config.schedule else "nightly"),
        schedules=[schedule],
        parameters=parameters,
        description=f"negminer: mine {parameters['pairs']} into {parameters['out']}/{parameters['name']}",
        tags=["negminer", parameters["name"]],
        pause_on_shutdown=False,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
