"""Evaluation results on disk and as text: the JSON record, where a version's copies live,
and the table the CLI and the run report print.

A published version is complete or absent and every file of it is checksummed in its
manifest, so an evaluation never writes inside it: a version's evaluations go beside it, to
``ROOT/NAME/evaluations/VERSION/<key>.json`` (:func:`evaluations_dir`), one file per
(retrieval set, model, budget, seed, compared version), replaced when the same evaluation is
run again. :func:`negminer.report.run_report` lists them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from negminer.errors import StorageError
from negminer.storage.atomic import write_bytes_atomic
from negminer.storage.retention import EVALUATIONS

logger = logging.getLogger(__name__)

METRIC_LABELS = {"ndcg@10": "nDCG@10", "recall@100": "recall@100", "mrr@10": "MRR@10"}
# Wang & Isola's diagnostics, shown when the record has them (lower is better for both).
GEOMETRY_LABELS = {"alignment": "alignment", "uniformity": "uniformity"}


def evaluations_dir(version_dir: str | Path) -> Path:
    """Where the evaluations of ``ROOT/NAME/VERSION`` are kept: ``ROOT/NAME/evaluations/VERSION``."""
    version_dir = Path(version_dir).resolve()
    return version_dir.parent / EVALUATIONS / version_dir.name


def record_key(record: dict[str, Any]) -> str:
    """12 hex digits naming an evaluation by what determines its figures (not its timings)."""
    arms = [{k: arm.get(k) for k in ("arm", "version", "rows_sha256")} for arm in record["arms"]]
    what = {"set": record["retrieval_set"], "config": record["config"], "arms": arms}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Write `record` as indented JSON, atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return path


def store_for_versions(record: dict[str, Any]) -> list[Path]:
    """A copy of `record` under :func:`evaluations_dir` of every version it trained on."""
    written = []
    for arm in record["arms"]:
        if arm.get("version"):
            path = evaluations_dir(arm["version"]) / f"{record_key(record)}.json"
            written.append(write_record(path, record))
    return written


def read_evaluations(version_dir: str | Path) -> list[dict[str, Any]]:
    """The evaluation records stored for a version, oldest first; unreadable files are skipped (logged)."""
    folder = evaluations_dir(version_dir)
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("%s: unreadable evaluation record, skipped (%s)", path, err)
    return sorted(records, key=lambda r: str(r.get("created_at", "")))


def load_record(path: str | Path) -> dict[str, Any]:
    """An evaluation JSON file written by :func:`write_record`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise StorageError(f"{path}: cannot read the evaluation record ({err})") from err


def markdown_table(record: dict[str, Any]) -> str:
    """One row per arm: its metrics and, for trained arms, the change against the base model.

    Alignment and uniformity get columns when the record has them.

    Example:
        >>> record = {"arms": [{"arm": "base", "ndcg@10": 0.6, "recall@100": 0.9, "mrr@10": 0.55}]}
        >>> print(markdown_table(record).splitlines()[2])
        | base model | 0.6000 | 0.9000 | 0.5500 |
    """
    shown = {**METRIC_LABELS, **{m: label for m, label in GEOMETRY_LABELS.items() if _any_arm_has(record, m)}}
    header = ["", *shown.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in record["arms"]:
        delta = arm.get("delta") or {}
        cells = [_cell(arm.get(m), delta.get(m)) for m in shown]
        lines.append("| " + " | ".join([arm_label(arm), *cells]) + " |")
    return "\n".join(lines)


def _any_arm_has(record: dict[str, Any], metric: str) -> bool:
    return any(arm.get(metric) is not None for arm in record["arms"])


def _cell(value: float | None, delta: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" + ("" if delta is None else f" ({delta:+.4f})")


def arm_label(arm: dict[str, Any]) -> str:
    """``base model``, or ``NAME/VERSION (train)``."""
    if not arm.get("version"):
        return "base model"
    version = Path(arm["version"])
    return f"{version.parent.name}/{version.name} ({arm['arm']})"


def summary_line(record: dict[str, Any]) -> str:
    """What was measured, in one line: the set, its size, the budget and the seed."""
    data, config = record["retrieval_set"], record["config"]
    trained = any(arm.get("version") for arm in record["arms"])
    budget = (
        f"; {config['steps']} steps x {config['batch_size']}, lr {config['learning_rate']}, seed {config['seed']}"
        if trained
        else ""
    )
    split = f" ({data['split']})" if data.get("split") else ""
    return f"{data.get('path')}{split}: {data['queries']} queries, {data['corpus']} documents{budget}"


def environment() -> dict[str, Any]:
    """Device, threads and library versions of this process."""
    import sentence_transformers
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
