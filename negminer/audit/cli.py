"""``negminer audit``: review flagged pairs on the command line or in a browser.

Mounted on the main app as ``app.add_typer(audit_app, name="audit")``. Every command opens
the audit database (``--db URL``, ``$NEGMINER_AUDIT_DB``, default ``ROOT/audit.db``),
upgrades its schema, and first loads the flagged pairs of versions under ``--root`` that are
new or changed, so a finished run is reviewable without a separate step.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from negminer.audit import DECISIONS, ENV_DB_URL
from negminer.errors import InputError

audit_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Review flagged pairs: list, show, decide, export, or serve the review page.",
)

Root = Annotated[Path, typer.Option("--root", help="Datasets root; the audit database defaults to ROOT/audit.db.")]
Db = Annotated[str | None, typer.Option("--db", envvar=ENV_DB_URL, help="SQLAlchemy URL of the audit database.")]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", help="Only this dataset.")]
VersionOpt = Annotated[str | None, typer.Option("--version", help="Only this version, e.g. v0002.")]
KindOpt = Annotated[str | None, typer.Option("--kind", help="false_negative, false_positive, near_duplicate, ...")]
MinQ = Annotated[float | None, typer.Option("--min-quality", help="Label quality at least this.")]
MaxQ = Annotated[float | None, typer.Option("--max-quality", help="Label quality at most this.")]
MinS = Annotated[float | None, typer.Option("--min-score", help="Anchor–doc score at least this.")]
MaxS = Annotated[float | None, typer.Option("--max-score", help="Anchor–doc score at most this.")]
StatusOpt = Annotated[str, typer.Option("--status", help="all, pending (no decision or skip) or decided.")]
DEFAULT_ROOT = Path("datasets")


def _engine(root: Path, db: str | None, *, sync: bool = True):
    from negminer.audit.db import default_url, open_db
    from negminer.audit.loader import sync_root

    if db is None and not root.is_dir():  # a mistyped --root would get an empty database of its own
        raise InputError(f"{root}: no such datasets root (pass --root ROOT, or --db URL for a database elsewhere)")
    engine = open_db(db or default_url(root))
    if sync:
        sync_root(engine, root)
    return engine


def _filters(dataset, version, kind, min_quality, max_quality, min_score, max_score, status):
    from negminer.audit.queries import Filters

    return Filters(
        dataset=dataset,
        version=version,
        kind=kind,
        min_quality=min_quality,
        max_quality=max_quality,
        min_score=min_score,
        max_score=max_score,
        status=status,
    )


@audit_app.command("load")
def load(
    versions: Annotated[list[Path], typer.Argument(help="Dataset version folders ROOT/NAME/vNNNN.")],
    db: Db = None,
    force: Annotated[bool, typer.Option("--force", help="Reload even if unchanged.")] = False,
) -> None:
    """Load the flagged pairs of dataset versions into the audit database."""
    from negminer.audit.db import default_url, open_db
    from negminer.audit.loader import load_version

    engine = open_db(db or default_url(versions[0].resolve().parents[1]))
    for version in versions:
        result = load_version(engine, version, force=force)
        state = "loaded" if result.loaded else "unchanged:"
        typer.echo(f"{state} {result.rows} flagged pairs of {result.dataset}/{result.version}")


@audit_app.command("list")
def list_(
    root: Root = DEFAULT_ROOT,
    db: Db = None,
    dataset: DatasetOpt = None,
    version: VersionOpt = None,
    kind: KindOpt = None,
    min_quality: MinQ = None,
    max_quality: MaxQ = None,
    min_score: MinS = None,
    max_score: MaxS = None,
    status: StatusOpt = "all",
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many rows.")] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line, texts included.")] = False,
) -> None:
    """List flagged pairs in queue order: undecided first, lowest label quality first."""
    from negminer.audit.queries import count_pairs, list_pairs

    engine = _engine(root, db)
    filters = _filters(dataset, version, kind, min_quality, max_quality, min_score, max_score, status)
    views = list_pairs(engine, filters, limit=limit, offset=offset)
    if as_json:
        for view in views:
            typer.echo(json.dumps(view.as_record(), ensure_ascii=False))
        return
    typer.echo(f"{'id':>6}  {'dataset/version':<28} {'kind':<15} {'quality':>7} {'score':>6}  {'decision':<11} pair")
    for view in views:
        p = view.pair
        typer.echo(
            f"{p.id:>6}  {p.dataset + '/' + p.version:<28} {p.kind:<15} {_num(p.quality):>7} {_num(p.score):>6}  "
            f"{view.decision or '-':<11} {p.anchor_id} -> {p.doc_id}"
        )
    typer.echo(f"{len(views)} of {count_pairs(engine, filters)} flagged pairs", err=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@audit_app.command("show")
def show(
    pair_id: Annotated[int, typer.Argument(help="Flagged pair id (from `audit list`).")],
    root: Root = DEFAULT_ROOT,
    db: Db = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the pair as JSON.")] = False,
) -> None:
    """Show one flagged pair: texts, scores, why it was flagged, its decisions."""
    from negminer.audit.queries import get_pair, history

    engine = _engine(root, db)
    view = get_pair(engine, pair_id)
    if view is None:
        raise InputError(f"no flagged pair with id {pair_id}")
    record = view.as_record()
    past = history(engine, view.pair.dataset, view.pair.anchor_id, view.pair.doc_id)
    if as_json:
        record["history"] = [_decision_record(d) for d in past]
        typer.echo(json.dumps(record, ensure_ascii=False, indent=2))
        return
    p = view.pair
    typer.echo(f"#{p.id}  {p.dataset}/{p.version}  {p.kind}  label quality {_num(p.quality)}")
    typer.echo(f"why: {p.why}")
    typer.echo(f"score {_num(p.score)}  positive score {_num(p.positive_score)}  rank {p.rank}  action {p.action}")
    if p.features:
        typer.echo("features: " + ", ".join(f"{k}={v}" for k, v in p.features.items()))
    typer.echo(f"\nANCHOR {p.anchor_id}\n{p.anchor_text}")
    typer.echo(f"\nPOSITIVE {p.positive_id}\n{p.positive_text or '-'}")
    heading = "FLAGGED POSITIVE" if p.is_positive else "CANDIDATE"
    typer.echo(f"\n{heading} {p.doc_id}  {p.doc_title or ''}\n{p.doc_text}")
    typer.echo("\ndecisions:" if past else "\nno decision yet")
    for d in past:
        comment = f": {d.comment}" if d.comment else ""
        typer.echo(f"  {d.decided_at:%Y-%m-%d %H:%M} {d.decision} by {d.reviewer} (on {d.version}){comment}")


def _decision_record(decision) -> dict:
    from negminer.audit.db import as_utc

    return {
        "decision": decision.decision,
        "reviewer": decision.reviewer,
        "comment": decision.comment,
        "decided_at": as_utc(decision.decided_at).isoformat(),
        "version": decision.version,
    }


@audit_app.command("decide")
def decide(
    decision: Annotated[str, typer.Argument(help=f"One of {', '.join(DECISIONS)}.")],
    pair_ids: Annotated[list[int], typer.Argument(help="Flagged pair ids (from `audit list`).")],
    root: Root = DEFAULT_ROOT,
    db: Db = None,
    reviewer: Annotated[
        str | None, typer.Option("--reviewer", help="Who decides (default $NEGMINER_REVIEWER, else the login name).")
    ] = None,
    comment: Annotated[str | None, typer.Option("--comment", help="Why (optional).")] = None,
) -> None:
    """Record a decision on one or more flagged pairs (appended; the newest one counts)."""
    from negminer.audit.queries import get_pair, record_decision

    engine = _engine(root, db, sync=False)
    who = reviewer or os.environ.get("NEGMINER_REVIEWER") or getpass.getuser()
    if decision not in DECISIONS:
        raise InputError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    unknown = [str(pair_id) for pair_id in pair_ids if get_pair(engine, pair_id) is None]
    if unknown:  # all or nothing: a typo in one id must not leave the others half recorded
        raise InputError(f"no flagged pair with id {', '.join(unknown)}; nothing recorded")
    for pair_id in pair_ids:
        decision_id = record_decision(engine, pair_id, decision, reviewer=who, comment=comment)
        typer.echo(f"pair {pair_id}: {decision} by {who} (decision {decision_id})")


@audit_app.command("export")
def export(
    out: Annotated[Path, typer.Argument(help="Output file (.csv, .jsonl, or .json for Label Studio).")],
    output_format: Annotated[
        str | None, typer.Option("--format", help="csv, jsonl, argilla or label-studio (default: from the suffix).")
    ] = None,
    root: Root = DEFAULT_ROOT,
    db: Db = None,
    dataset: DatasetOpt = None,
    version: VersionOpt = None,
    kind: KindOpt = None,
    min_quality: MinQ = None,
    max_quality: MaxQ = None,
    min_score: MinS = None,
    max_score: MaxS = None,
    status: StatusOpt = "all",
) -> None:
    """Export flagged pairs with their decisions to CSV, JSONL, Argilla or Label Studio."""
    from negminer.audit.export import export_pairs, format_for
    from negminer.audit.queries import count_pairs, list_pairs

    fmt = format_for(out, output_format)
    engine = _engine(root, db)
    filters = _filters(dataset, version, kind, min_quality, max_quality, min_score, max_score, status)
    views = list_pairs(engine, filters, limit=max(count_pairs(engine, filters), 1))
    for path in export_pairs(views, out, output_format=fmt):
        typer.echo(f"wrote {path}")
    typer.echo(f"{len(views)} flagged pairs exported as {fmt}", err=True)


@audit_app.command("serve")
def serve(
    root: Root = DEFAULT_ROOT,
    db: Db = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; beyond loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8765,
    token: Annotated[
        str | None, typer.Option("--token", envvar="NEGMINER_AUDIT_TOKEN", help="Access token (16+ characters).")
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host", help="Another name the page is opened by (repeatable); else --host and loopback only."
        ),
    ] = None,
) -> None:
    """Serve the review page (one flagged pair at a time, keyboard shortcuts, progress, plot)."""
    import uvicorn

    from negminer.audit.web import check_binding, create_app

    check_binding(host, token)
    engine = _engine(root, db)
    shown = f"[{host}]" if ":" in host else host
    suffix = "/?token=…" if token else "/"
    typer.echo(f"review page: http://{shown}:{port}{suffix}  (Ctrl+C stops)", err=True)
    app = create_app(engine, token=token, root=root, host=host, allowed_hosts=allowed_host or ())
    uvicorn.run(app, host=host, port=port, log_level="warning")
