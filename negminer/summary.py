"""The few lines ``negminer mine`` prints on stderr when it has written a version.

What went in, what came out, why candidates were dropped, what curation did with the given
positives, and where to look next (the manifest, the run report, the review page). Built
from the version's manifest only, so it says what the files hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from negminer.storage.versions import read_manifest

# Candidate outcomes that are not drops (counts.dropped_by_reason counts every candidate).
_NOT_DROPPED = ("selected", "surplus", "positive")


def mine_summary(version_dir: str | Path, *, root: str | Path | None = None) -> list[str]:
    """Human-readable lines summarising the version at `version_dir`.

    Args:
        version_dir: a complete dataset version ``ROOT/NAME/VERSION``.
        root: the datasets root as the user gave it (default: the version's grandparent), for
            the review command.

    Returns:
        Lines without trailing newlines, the first starting with ``summary:``.

    Example:
        >>> print("\\n".join(mine_summary("datasets/scifact-sample/v0001")))  # doctest: +SKIP
        summary: 225 pairs in (0 rejected) -> 669 training rows, 600 negatives for 200 anchors ...
    """
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    counts: dict[str, Any] = manifest.get("counts", {})
    name = manifest.get("name", version_dir.parent.name)
    root = Path(root) if root is not None else version_dir.parent.parent
    return [
        _totals(counts),
        _drops(counts.get("dropped_by_reason") or {}),
        *_strategy(manifest),
        _positives(counts, manifest.get("config", {}).get("curate", {})),
        _flagged(counts.get("flagged_by_kind") or {}, version_dir),
        f"  report: prefect artifact inspect {_artifact_key(name)}-report; counts: {version_dir / 'manifest.json'}",
        f"  review: negminer audit serve --root {root}   (http://127.0.0.1:8765)",
    ]


def _totals(counts: dict[str, Any]) -> str:
    short = counts.get("anchors_short", 0)
    return (
        f"summary: {counts.get('pairs_in', 0)} pairs in ({counts.get('rejected_rows', 0)} rejected), "
        f"{counts.get('docs', 0)} documents -> {counts.get('triplet_rows', 0)} training rows, "
        f"{counts.get('negatives', 0)} negatives for {counts.get('anchors', 0)} anchors"
        + (f" ({short} short of negatives)" if short else "")
    )


def _drops(by_reason: dict[str, int]) -> str:
    drops = sorted(((n, r) for r, n in by_reason.items() if r not in _NOT_DROPPED and n), reverse=True)
    retrieved = sum(by_reason.values())
    listed = ", ".join(f"{reason} {n}" for n, reason in drops) or "none"
    return (
        f"  candidates: {retrieved} retrieved, {by_reason.get('selected', 0)} chosen, "
        f"{by_reason.get('surplus', 0)} eligible but not sampled; dropped: {listed}"
    )


def _strategy(manifest: dict[str, Any]) -> list[str]:
    """What the ``auto`` settings chose from curation's estimate (no line when none is auto)."""
    choices = []
    if choice := (manifest.get("selection") or {}).get("auto_strategy"):
        choices.append(f"strategy {choice['chosen']}")
    curate = (manifest.get("config") or {}).get("curate") or {}
    noise = manifest.get("noise") or {}
    action = (manifest.get("policies") or {}).get("false_negative_action")
    if curate.get("false_negative_action") == "auto" and action and noise:
        choices.append("flagged false negatives " + ("kept as negatives, for review" if action == "keep" else action))
    if not choices:
        return []
    relevant = noise.get("negatives_relevant")
    estimate = "no estimate" if relevant is None else f"curation estimates {relevant:.1%} of the candidates relevant"
    return [f"  auto: {', '.join(choices)} ({estimate})"]


def _positives(counts: dict[str, Any], curate: dict[str, Any]) -> str:
    pairs = counts.get("pairs", 0)
    curation = counts.get("curation") or {}
    if not curate.get("enabled", True) or not curation:
        return f"  given positives: {pairs}, all kept (curation off)"
    if curation.get("skipped"):
        return f"  given positives: {pairs}, all kept (curation judged nothing)"
    flagged = curation.get("false_positive", 0)
    excluded = curation.get("pairs_excluded", 0)
    action = curate.get("false_positive_action", "quarantine")
    relabelled = curation.get("relabelled", 0)
    return (
        f"  given positives: {pairs}; {flagged} flagged as likely wrong (false_positive): "
        f"{pairs - excluded} kept, {excluded} excluded (false_positive_action: {action})"
        + (f"; {relabelled} false negatives relabelled as extra positives" if relabelled else "")
    )


def _flagged(by_kind: dict[str, int], version_dir: Path) -> str:
    listed = ", ".join(f"{kind} {n}" for kind, n in by_kind.items()) or "none"
    return f"  flagged: {listed} ({version_dir / 'flagged.parquet'})"


def _artifact_key(name: str) -> str:
    from negminer.flows.mine import artifact_key  # the CLI has imported the flow already

    return artifact_key(name)
