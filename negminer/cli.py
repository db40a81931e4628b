"""negminer's command line: ``negminer mine PAIRS --corpus CORPUS --out ROOT``.

Errors print one line on stderr and exit with code 1 (the traceback only with ``--debug``).
The last line ``mine`` prints on stdout is the path of the dataset version it wrote.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from negminer.errors import NegminerError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Hard-negative mining and curation.")

_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def _set_offline_env() -> None:
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _set_offline_env()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("negminer").setLevel(logging.INFO)
    os.environ["NEGMINER_DEBUG"] = "1" if debug else ""


@app.command()
def mine(
    pairs: Annotated[Path, typer.Argument(help="Pairs file (Parquet/JSONL/CSV) or folder of Parquet files.")],
    out: Annotated[Path, typer.Option("--out", help="Datasets root folder.")],
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Corpus file with a text column.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name (default: the pairs file stem).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML config file.")] = None,
    num_negatives: Annotated[int | None, typer.Option("--num-negatives", help="Negatives per anchor.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Local sentence-transformers folder.")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="Embedding store (default ROOT/.embeddings).")] = None,
) -> None:
    """Embed, mine hard negatives and write a dataset version; prints its path last."""
    from negminer.config import PipelineConfig

    overrides = {"mine.num_negatives": num_negatives, "embed.model": model}
    pipeline = (
        PipelineConfig.from_yaml(config, **overrides)
        if config
        else PipelineConfig.from_dict({}, source="options", **overrides)
    )
    from negminer.flows.mine import mine_flow

    version = mine_flow(
        pairs=str(pairs),
        out=str(out),
        name=name or _default_name(pairs),
        corpus=str(corpus) if corpus else None,
        config=pipeline,
        store=str(store) if store else None,
    )
    typer.echo(version)


@app.command()
def verify(
    version: Annotated[Path, typer.Argument(help="A dataset version folder, or ROOT/NAME for its LATEST.")],
) -> None:
    """Check that a dataset version is complete: manifest present, every file's rows and sha256 match."""
    from negminer.errors import StorageError
    from negminer.storage.versions import LATEST, verify_version

    if (version / LATEST).exists():
        version = version / (version / LATEST).read_text().strip()
    problems = verify_version(version)
    if problems:
        raise StorageError(f"{version}: " + "; ".join(problems))
    typer.echo(f"ok {version}")


def _default_name(pairs: Path) -> str:
    return pairs.stem if pairs.is_file() else pairs.name


def main() -> None:
    """Console entry point: one clear line on stderr for negminer's own errors."""
    try:
        code = app(standalone_mode=False)
    except NegminerError as err:
        if os.environ.get("NEGMINER_DEBUG"):
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as err:
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if os.environ.get("NEGMINER_DEBUG"):
            raise
        typer.echo(f"error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)
