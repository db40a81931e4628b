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
# Shares above which a version's counts get a warning (see health_warnings).
SHORT_ANCHORS_WARN = 0.05
EXCLUDED_PAIRS_WARN = 0.2
TRUNCATED_TEXTS_WARN = 0.1


class RunReport(NamedTuple):
    markdown: str
    flagged: list[dict[str, Any]]  # the top flagged pairs, JSON-able rows
    flagged_total: int
    link: str  # file:// URI of the version folder
    warnings: list[str]  # health_warnings of the version


def run_report(version_dir: str | Path, *, timings: dict[str, dict[str, Any]] | None = None) -> RunReport:
    """Summarise a dataset version: counts in/out, drops per reason, flags per kind, score
    quantiles, changes against the parent, the time each stage took and the ``negminer
    evaluate`` runs that trained on it (``ROOT/NAME/evaluations/VERSION/``).

    Args:
        version_dir: a complete version folder.
        timings: stage -> ``{"seconds": float, "cached": bool}`` as measured by the flow.

    Example:
        >>> print(run_report("datasets/nightly/v0002").markdown)  # doctest: +SKIP
    """
    version_dir = Path(version_dir).resolve()
    manifest = read_manifest(version_dir)
    flagged, total = top_flagged(version_dir / "flagged.parquet")
    warnings = health_warnings(manifest)
    sections = [
        f"# {manifest.get('name', version_dir.parent.name)} {manifest['version']}",
        f"Dataset version: [{version_dir}]({version_dir.as_uri()}) (parent: {manifest.get('parent') or 'none'})",
        "## Warnings\n\n" + "\n".join(f"- {w}" for w in warnings) if warnings else "",
        _counts_section(manifest.get("counts", {})),
        # counts.dropped_by_reason gives every candidate its outcome, the chosen ones as "selected"
        _mapping_section("Candidates by outcome", manifest.get("counts", {}).get("dropped_by_reason")),
        _mapping_section("Flagged pairs by kind", _flag_counts(manifest, version_dir / "flagged.parquet")),
        _quantile_section(manifest.get("score_quantiles", {})),
        _diagnostics_section(manifest.get("diagnostics")),
        _changes_section(manifest.get("changes")),
        _timing_section(timings or {}),
        _evaluation_section(version_dir),
    ]
    return RunReport("\n\n".join(s for s in sections if s), flagged, total, version_dir.as_uri(), warnings)


def health_warnings(manifest: dict[str, Any]) -> list[str]:
    """What in a version's counts deserves a look before training on it; empty when nothing does.

    Rejected input rows, anchors left short of negatives, given positives left out as
    false positives, and texts truncated by the model, each above its share (module constants);
    and a curation that judged nothing (its cross-validation had too few folds).

    Example:
        >>> health_warnings({"counts": {"anchors": 100, "anchors_short": 20}, "config": {}})[0][:28]
        '20 of 100 anchors (20%) have'
    """
    counts = manifest.get("counts", {})
    config = manifest.get("config", {})
    return [
        *_rejected_warning(counts),
        *_short_anchors_warning(counts, config.get("mine", {})),
        *_excluded_pairs_warning(counts.get("curation") or {}, config.get("curate", {})),
        *_curation_skipped_warning(counts.get("curation") or {}, manifest.get("noise") or {}),
        *_truncated_warning(counts.get("embedding") or {}),
    ]


def _rejected_warning(counts: dict[str, Any]) -> list[str]:
    rejected = counts.get("rejected_rows", 0)
    if not rejected:
        return []
    return [f"{rejected} input rows were rejected and left out; rejects.parquet names each one's file, row and reason"]


def _short_anchors_warning(counts: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    short, anchors = counts.get("anchors_short", 0), counts.get("anchors", 0)
    if not _share_above(short, anchors, SHORT_ANCHORS_WARN):
        return []
    wanted = mine.get("num_negatives", "the set")
    return [
        f"{short} of {anchors} anchors ({short / anchors:.0%}) have fewer than {wanted} negatives: the strategy's "
        "filters left too few candidates (a larger mine.search_depth or looser margins give them more)"
    ]


def _excluded_pairs_warning(curation: dict[str, Any], curate: dict[str, Any]) -> list[str]:
    excluded, scored = curation.get("pairs_excluded", 0), curation.get("pairs_scored", 0)
    if not _share_above(excluded, scored, EXCLUDED_PAIRS_WARN):
        return []
    action = curate.get("false_positive_action", "quarantine")
    return [
        f"curation left {excluded} of {scored} given positives ({excluded / scored:.0%}) out of training "
        f"({action}, false_positive): so large a share usually means the positives are looser than the "
        "model's notion of relevance (topical labels) rather than wrong; audit a sample "
        "(negminer audit list --kind false_positive) or set curate.false_positive_action: keep"
    ]


def _curation_skipped_warning(curation: dict[str, Any], noise: dict[str, Any]) -> list[str]:
    if not curation.get("skipped"):
        return []
    return [noise.get("skipped") or "curation judged nothing (too few cross-validation folds): nothing flagged"]


def _share_above(part: int, whole: int, limit: float) -> bool:
    return whole > 0 and part / whole > limit


def _truncated_warning(embedding: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for stem, tally in embedding.items():
        truncated, rows = tally.get("truncated", 0), tally.get("rows", 0)
        if _share_above(truncated, rows, TRUNCATED_TEXTS_WARN):  # -1 (unknown) never passes
            out.append(
                f"{truncated} of {rows} {stem.removesuffix('s')} texts ({truncated / rows:.0%}) are longer than "
                "the model's max_seq_length and were embedded from their beginning only (embed.max_seq_length "
                "raises it up to the model's limit)"
            )
    return out


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


def _diagnostics_section(diagnostics: dict[str, Any] | None) -> str:
    """Alignment, uniformity, the unlabelled-positive share and the squared-distance histograms."""
    if not diagnostics:
        return ""
    rows = [
        (
            "alignment (lower: positives closer)",
            diagnostics.get("alignment"),
            f"{diagnostics['alignment_pairs']} pairs",
        ),
        (
            "uniformity (lower: more spread)",
            diagnostics.get("uniformity"),
            f"{diagnostics['uniformity_vectors']} sampled vectors",
        ),
    ]
    share = diagnostics.get("unlabelled_positives")
    if share:
        rows.append(_share_row("candidates judged relevant", share))
        rows += [_share_row(f"source {source}", part) for source, part in (share.get("by_source") or {}).items()]
    text = "## Embedding diagnostics\n\n" + _table(("", "value", "over"), rows)
    histograms = diagnostics.get("histograms")
    return text + "\n\n" + _histogram_figure(histograms) if histograms else text


def _share_row(label: str, share: dict[str, Any]) -> tuple[str, str, str]:
    rate = share.get("rate")
    shown = "" if rate is None else f"{rate:.2%}"
    return (label, shown, f"{share['judged_relevant']} of {share['candidates']} unlabelled candidates")


_BARS = " ▁▂▃▄▅▆▇█"


def _histogram_figure(histograms: dict[str, Any]) -> str:
    """One text bar chart per series of squared distances (each scaled to its own peak), 0 to 4."""
    series = [(name, histograms[name]) for name in ("positive", "negative", "random") if histograms.get(name)]
    lines = []
    for name, counts in series:
        peak = max(counts) or 1
        bars = "".join(_BARS[0 if c == 0 else max(1, round(c / peak * (len(_BARS) - 1)))] for c in counts)
        lines.append(f"{name:<9}|{bars}| {sum(counts)}")
    edges = histograms.get("squared_distance_edges") or [0.0, 4.0]
    width = len(series[0][1]) if series else 0
    axis = f"{'':<9} {edges[0]:g}{'':<{max(0, width - 2)}}{edges[-1]:g}"
    return "Squared distances ||f(x) − f(y)||² (positive pairs, chosen negatives, random pairs):\n\n```\n" + (
        "\n".join([*lines, axis]) + "\n```"
    )


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


def _evaluation_section(version_dir: Path) -> str:
    """``negminer evaluate`` runs that trained on this version (kept beside it, never inside)."""
    from negminer.evaluation.records import markdown_table, read_evaluations, summary_line

    found = read_evaluations(version_dir)
    if not found:
        return ""
    parts = [f"{summary_line(record)}\n\n{markdown_table(record)}" for record in found]
    return "## Evaluations\n\n" + "\n\n".join(parts)


def _timing_section(timings: dict[str, dict[str, Any]]) -> str:
    if not timings:
        return ""
    rows = [(stage, f"{t['seconds']:.2f}", "cached" if t.get("cached") else "") for stage, t in timings.items()]
    return "## Time per stage\n\n" + _table(("stage", "seconds", ""), rows)
