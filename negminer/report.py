"""A run's report, built from the manifest of the version it wrote: small enough for Prefect
artifacts (markdown summary, a table of the top flagged pairs, a link to the version).

:func:`run_report` never imports prefect; :mod:`negminer.flows.mine` publishes its output.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.parquet as pq

from negminer.storage.versions import read_manifest

TOP_FLAGGED = 20
_SCORE_COLUMNS = ("quality_score", "quality", "score")


class RunReport(NamedTuple):
    markdown: str
    flagged: list[dict[str, Any]]  # the top flagged pairs, JSON-able rows
    flagged_total: int
    link: str  # file:// URI of the version folder


def run_report(version_dir: str | Path, *, timings: dict[str, dict[str, Any]] | None = None) -> RunReport:
    """Summarise a dataset version: counts in/out, drops per reason, flags per kind, score
    quantiles, changes against the parent and the time each stage took.

    Args:
        version_dir: a complete version folder.
        timings: stage -> ``{"seconds": float, "cached": bool}`` as measured by the flow.

    Example:
        >>> print(run_report("datasets/nightly/v0002").markdown)  # doctest: +SKIP
    """
    version_dir = Path(version_dir).resolve()
    manifest = read_manifest(version_dir)
    flagged, total = top_flagged(version_dir / "flagged.parquet")
    sections = [
        f"# {manifest.get('name', version_dir.parent.name)} {manifest['version']}",
        f"Dataset version: [{version_dir}]({version_dir.as_uri()}) (parent: {manifest.get('parent') or 'none'})",
        _counts_section(manifest.get("counts", {})),
        _mapping_section("Dropped candidates by reason", manifest.get("counts", {}).get("dropped_by_reason")),
        _mapping_section("Flagged pairs by kind", _flag_counts(manifest, version_dir / "flagged.parquet")),
        _quantile_section(manifest.get("score_quantiles", {})),
        _changes_section(manifest.get("changes")),
        _timing_section(timings or {}),
    ]
    return RunReport("\n\n".join(s for s in sections if s), flagged, total, version_dir.as_uri())


def top_flagged(path: Path, *, limit: int = TOP_FLAGGED) -> tuple[list[dict[str, Any]], int]:
    """The `limit` lowest-quality rows of flagged.parquet (all of them if it has no score) and its row count."""
    if not path.exists():
        return [], 0
    table = pq.read_table(path)
    score = next((c for c in _SCORE_COLUMNS if c in table.column_names), None)
    if score is not None:
        table = table.sort_by([(score, "ascending")])
    rows = table.slice(0, limit).to_pylist()
    return [{k: _cell(v) for k, v in row.items()} for row in rows], table.num_rows


def _flag_counts(manifest: dict[str, Any], path: Path) -> dict[str, int] | None:
    counts = manifest.get("counts", {}).get("flagged_by_kind")
    if counts is not None or not path.exists():
        return counts
    if "kind" not in pq.read_schema(path).names:
        return None
    kinds = Counter(pq.read_table(path, columns=["kind"]).column("kind").to_pylist())
    return {str(kind): n for kind, n in sorted(kinds.items(), key=lambda kv: str(kv[0]))}


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, default=str)[:200]


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _counts_section(counts: dict[str, Any]) -> str:
    keys = (
        "pairs_in",
        "rejected_rows",
        "pairs",
        "anchors",
        "docs",
        "candidates",
        "negatives",
        "anchors_short",
        "triplet_rows",
    )
    rows = [(k, counts[k]) for k in keys if k in counts]
    embedding = counts.get("embedding") or {}
    rows += [
        (f"embedded ({stem})", f"{v.get('embedded')} new, {v.get('reused')} reused") for stem, v in embedding.items()
    ]
    return "## Counts\n\n" + _table(("count", "value"), rows) if rows else ""


def _mapping_section(title: str, mapping: dict[str, int] | None) -> str:
    if not mapping:
        return f"## {title}\n\nnone"
    return f"## {title}\n\n" + _table(("", "rows"), sorted(mapping.items(), key=lambda kv: -kv[1]))


def _quantile_section(quantiles: dict[str, dict[str, float]]) -> str:
    names = sorted({q for values in quantiles.values() for q in values})
    if not names:
        return ""
    rows = [(kind, *(values.get(q, "") for q in names)) for kind, values in quantiles.items()]
    return "## Score quantiles\n\n" + _table(("scores", *names), rows)


def _changes_section(changes: dict[str, Any] | None) -> str:
    if not changes:
        return "## Changes\n\nfirst version"
    rows = [
        (part, changes[part]["added"], changes[part]["removed"], changes[part]["kept"])
        for part in ("triplets", "pairs", "docs")
        if part in changes
    ]
    text = f"## Changes against {changes['parent']}\n\n" + _table(("rows", "added", "removed", "kept"), rows)
    drift = changes.get("score_quantiles_drift", {}).get("negative")
    if drift:
        text += "\n\nNegative-score drift: " + ", ".join(f"{q} {d:+.4f}" for q, d in drift.items())
    return text


def _timing_section(timings: dict[str, dict[str, Any]]) -> str:
    if not timings:
        return ""
    rows = [(stage, f"{t['seconds']:.2f}", "cached" if t.get("cached") else "") for stage, t in timings.items()]
    return "## Time per stage\n\n" + _table(("stage", "seconds", ""), rows)
