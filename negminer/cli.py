"""negminer's command line: ``negminer mine PAIRS --corpus CORPUS --out ROOT``.

Errors print one line on stderr and exit with code 1 (the traceback only with ``--debug``).
The last line ``mine`` prints on stdout is the path of the dataset version it wrote.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from negminer.audit.cli import audit_app
from negminer.errors import NegminerError
from negminer.evaluation.cli import evaluate_command

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Hard-negative mining and curation.")
app.add_typer(audit_app, name="audit")

_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    # Prefect's temporary server needs ~13 s on a new database, more on a busy machine (default 20 s).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def _set_offline_env() -> None:
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _set_offline_env()
    _configure_logging(debug)
    os.environ["NEGMINER_DEBUG"] = "1" if debug else ""


def _configure_logging(debug: bool) -> None:
    """negminer's progress on stderr; Prefect's console logs (and tracebacks) only with --debug.

    Prefect still sends every run log to its server, where the UI shows them.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("negminer")
    ours.setLevel(logging.INFO)
    ours.addHandler(handler)
    ours.propagate = False
    if debug:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    else:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


_STRATEGY_HELP = (
    "Preset: auto (the default: naive or simans, chosen from curation's estimate of the relevant candidates), "
    "naive, positive-aware, semi-hard, calibrated or simans (docs/strategies.md); "
    "options set in --config override it."
)


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
    strategy: Annotated[str | None, typer.Option("--strategy", help=_STRATEGY_HELP)] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help="Where candidates come from: dense, bm25, dense2; repeat to fuse several (mine.sources).",
        ),
    ] = None,
    second_model: Annotated[
        str | None,
        typer.Option("--second-model", help="Local model folder of the dense2 source (mine.second_model)."),
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option("--dask-address", help="Run the shard tasks on the Dask scheduler at tcp://HOST:PORT.")
    ] = None,
    dask_workers: Annotated[
        int | None, typer.Option("--dask-workers", min=1, help="Shard tasks on a local Dask cluster of N workers.")
    ] = None,
    processes: Annotated[
        int | None, typer.Option("--processes", min=1, help="CPU processes that encode texts (embed.processes).")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision", help="auto, float32, bfloat16 or int8: the forward pass's arithmetic (embed.precision)."
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="auto, torch or openvino: what runs the forward pass (embed.backend)."),
    ] = None,
    query_prompt: Annotated[
        str | None,
        typer.Option("--query-prompt", help="Prompt put before every anchor, e.g. 'query: ' (embed.query_prompt)."),
    ] = None,
    document_prompt: Annotated[
        str | None,
        typer.Option(
            "--document-prompt",
            help="Prompt put before every positive and corpus text, e.g. 'passage: ' (embed.document_prompt).",
        ),
    ] = None,
) -> None:
    """Embed, mine hard negatives and write a dataset version; prints its path last.

    SIGTERM or SIGINT (to the process or its group) ends it within seconds, with exit code 128 +
    the signal and one line on stderr; the next identical run resumes (negminer/flows/stopping.py).
    """
    from negminer.flows.stopping import exit_on_signals
    from negminer.storage.versions import check_dataset_name

    name = name or _default_name(pairs)
    check_dataset_name(name)
    with exit_on_signals(out / name, notice=_STOPPED):
        from negminer.config import PipelineConfig

        overrides = {
            "mine.num_negatives": num_negatives,
            "embed.model": model,
            "mine.strategy": strategy,
            "mine.sources": source or None,
            "mine.second_model": second_model,
            "embed.processes": processes,
            "embed.precision": precision,
            "embed.backend": backend,
            "embed.query_prompt": query_prompt,
            "embed.document_prompt": document_prompt,
        }
        pipeline = (
            PipelineConfig.from_yaml(config, **overrides)
            if config
            else PipelineConfig.from_dict({}, source="options", **overrides)
        )
        from negminer.flows.mine import run_mine

        version = run_mine(
            str(pairs),
            str(out),
            name,
            corpus=str(corpus) if corpus else None,
            config=pipeline,
            store=str(store) if store else None,
            dask_address=dask_address,
            dask_workers=dask_workers,
        )
        _echo_warnings(Path(version))
        _echo_summary(Path(version), out)
        typer.echo(version)


def _echo_summary(version: Path, root: Path) -> None:
    """What went in and came out, and where to look next, on stderr (stdout ends with the path)."""
    from negminer.summary import mine_summary

    for line in mine_summary(version, root=root):
        typer.echo(line, err=True)


_STOPPED = "stopped by {signal}; rerun the same command to resume (finished stages are reused)"


def _echo_warnings(version: Path) -> None:
    """The version's health warnings on stderr (Prefect's console logs are off without --debug)."""
    from negminer.report import health_warnings
    from negminer.storage.versions import read_manifest

    for warning in health_warnings(read_manifest(version)):
        typer.echo(f"warning: {warning}", err=True)


app.command("evaluate")(evaluate_command)


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


@app.command()
def refilter(
    version: Annotated[Path, typer.Argument(help="A dataset version folder (ROOT/NAME/VERSION).")],
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML config: its mine section and curate *_action policies.")
    ] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", help=_STRATEGY_HELP)] = None,
    num_negatives: Annotated[int | None, typer.Option("--num-negatives", help="Negatives per anchor.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Datasets root (default: the parent's).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name (default: the parent's).")] = None,
) -> None:
    """Derive a new version from VERSION's stored candidates, without embedding or searching; prints its path last."""
    from negminer.refilter import refilter as refilter_version
    from negminer.refilter import refilter_config, refilter_policies
    from negminer.storage.versions import check_dataset_name

    if name is not None:
        check_dataset_name(name)
    settings = refilter_config(version, config, strategy=strategy, num_negatives=num_negatives)
    policies = refilter_policies(version, config)
    result = refilter_version(version, mine=settings, curation=policies, root=out, name=name)
    typer.echo(
        f"{result.counts['negatives']} negatives, {result.counts['anchors_short']} anchors short, "
        f"{result.seconds:.2f} s",
        err=True,
    )
    _echo_warnings(result.path)
    typer.echo(str(result.path))


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", help="YAML file: pipeline sections plus run (pairs, out, name).")],
    cron: Annotated[str | None, typer.Option("--cron", help='Cron string, e.g. "0 3 * * *".')] = None,
    timezone: Annotated[str | None, typer.Option("--timezone", help="IANA time zone (default UTC).")] = None,
    deployment: Annotated[str | None, typer.Option("--deployment", help="Deployment name.")] = None,
) -> None:
    """Create a Prefect deployment of `mine` on a cron schedule and serve it (needs PREFECT_API_URL)."""
    if not os.environ.get("PREFECT_API_URL"):
        typer.echo(
            "warning: PREFECT_API_URL is not set: the temporary server has no scheduler, "
            "so scheduled runs will not be created (run `prefect server start`)",
            err=True,
        )
    from negminer.flows.serve import serve_mine

    serve_mine(config, cron=cron, timezone=timezone, deployment=deployment)


@app.command()
def runs(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    out: Annotated[Path, typer.Option("--out", help="Datasets root folder.")] = Path("datasets"),
) -> None:
    """List a dataset's versions with their counts, oldest first (* marks LATEST)."""
    from negminer.errors import StorageError
    from negminer.storage.lineage import version_summaries
    from negminer.storage.versions import check_dataset_name

    check_dataset_name(name)
    summaries = version_summaries(out / name)
    if not summaries:
        raise StorageError(f"{out / name}: no complete versions")
    header = (
        "version",
        "created_at",
        "parent",
        "pairs",
        "triplets",
        "negatives",
        "rejected",
        "embedded",
        "+rows",
        "-rows",
    )
    rows = [
        (
            f"{s.version}{' *' if s.latest else ''}",
            s.created_at,
            s.parent,
            s.pairs,
            s.triplet_rows,
            s.negatives,
            s.rejected,
            s.embedded,
            s.added,
            s.removed,
        )
        for s in summaries
    ]
    cells = [[("-" if v is None else str(v)) for v in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@app.command()
def gc(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    keep: Annotated[int, typer.Option("--keep", help="Newest versions to keep (LATEST is always kept).")],
    out: Annotated[Path, typer.Option("--out", help="Datasets root folder.")] = Path("datasets"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be removed.")] = False,
) -> None:
    """Remove old versions, their evaluations, the stored embeddings only they used, and idle work folders."""
    from negminer.storage.retention import collect_garbage

    result = collect_garbage(out, name, keep=keep, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {len(result.versions)} version(s) {' '.join(result.versions)}".rstrip())
    typer.echo(
        f"{verb} {len(result.shards)} embedding shard(s), the evaluations of {len(result.evaluations)} version(s), "
        f"{len(result.work_dirs)} work folder(s), "
        f"{len(result.staging)} stale staging folder(s): {result.bytes_freed / 1e6:.1f} MB"
    )


def _default_name(pairs: Path) -> str:
    return pairs.stem if pairs.is_file() else pairs.name


def main() -> None:
    """Console entry point: one clear line on stderr for negminer's own errors."""
    try:
        code = app(standalone_mode=False)
    except NegminerError as err:
        if os.environ.get("NEGMINER_DEBUG"):
            raise
        typer.echo(f"error: {_with_hint(str(err), err.__cause__)}", err=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except OSError as err:  # a full disk, a read-only or missing folder: the file and the cause
        if os.environ.get("NEGMINER_DEBUG"):
            raise
        typer.echo(f"error: {os_error_line(err)}", err=True)
        sys.exit(1)
    except Exception as err:
        import click

        # typer ships its own copy of click: its usage errors are not click's classes
        if isinstance(err, click.exceptions.ClickException) or (hasattr(err, "show") and hasattr(err, "exit_code")):
            err.show()
            sys.exit(err.exit_code)
        if os.environ.get("NEGMINER_DEBUG"):
            raise
        typer.echo(
            f"error: {type(err).__name__}: {_one_line(str(err))} (rerun with --debug for the traceback)", err=True
        )
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


# Errors after which freeing space, or making the folder writable, and rerunning resumes the run.
_RESUME = "then rerun the same command to resume (finished stages are reused)"
_HINTS = {
    errno.ENOSPC: f"free space, {_RESUME}",
    errno.EDQUOT: f"free space, {_RESUME}",
    errno.EFBIG: f"free space, {_RESUME}",
    errno.EROFS: f"make the folder writable, {_RESUME}",
}


def os_error_line(err: OSError) -> str:
    """One line for an OSError: the file (or files) it names, the cause, and for a full disk or
    a read-only folder what to do.

    Example:
        >>> os_error_line(OSError(errno.ENOSPC, "No space left on device", "out/x.parquet"))[:45]
        'out/x.parquet: No space left on device; free '
    """
    if err.filename is not None:
        where = os.fsdecode(err.filename)
        if err.filename2 is not None:
            where += f" -> {os.fsdecode(err.filename2)}"
        line = f"{where}: {err.strerror or os.strerror(err.errno or 0)}"
    else:
        line = str(err) or type(err).__name__
    return _with_hint(line, err)


def _with_hint(line: str, cause: BaseException | None) -> str:
    """`line` on one line, with what to do when `cause` is a full disk or a read-only folder."""
    hint = _HINTS.get(cause.errno) if isinstance(cause, OSError) else None
    if hint and _RESUME not in line:
        line += f"; {hint}"
    return _one_line(line)


def _one_line(text: str) -> str:
    """`text` on one line (some libraries' messages span several: SQL, details)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or "unknown error"
