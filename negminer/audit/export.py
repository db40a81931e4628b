"""Export flagged pairs and their decisions: CSV, JSONL, Argilla and Label Studio imports.

* ``csv`` / ``jsonl``: one row per flagged pair, every field of
  :meth:`~negminer.audit.queries.PairView.as_record` (features as a JSON string in CSV).
* ``argilla``: JSONL of flat records for Argilla 2's ``dataset.records.log(records)``: text
  fields ``anchor``, ``positive``, ``candidate``; the question ``decision`` (a label among
  :data:`~negminer.audit.db.DECISIONS`) carries the current decision as a suggestion; the rest
  are metadata properties. :data:`ARGILLA_SETTINGS` says how to create the dataset.
* ``label-studio``: a JSON list of tasks (``data`` + ``annotations`` for decided pairs) for
  Label Studio's import, plus ``<name>.label-config.xml``, the labeling interface to create the
  project with (:data:`LABEL_STUDIO_CONFIG`).

Writes are atomic (temp file, then rename).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from negminer.audit.db import DECISIONS
from negminer.audit.queries import PairView
from negminer.errors import InputError
from negminer.storage.atomic import write_bytes_atomic

ExportFormat = Literal["csv", "jsonl", "argilla", "label-studio"]
FORMATS: tuple[str, ...] = ("csv", "jsonl", "argilla", "label-studio")
_METADATA = ("dataset", "version", "kind", "quality", "score", "positive_score", "anchor_id", "doc_id", "why")

ARGILLA_SETTINGS = """\
import argilla as rg
settings = rg.Settings(
    fields=[rg.TextField(name="anchor"), rg.TextField(name="positive"), rg.TextField(name="candidate")],
    questions=[rg.LabelQuestion(name="decision", labels=["is_positive", "is_negative", "drop_pair", "skip"])],
    metadata=[rg.TermsMetadataProperty(name="kind"), rg.FloatMetadataProperty(name="quality"),
              rg.FloatMetadataProperty(name="score")],
)
"""

LABEL_STUDIO_CONFIG = """\
<View>
  <Header value="Anchor"/>
  <Text name="anchor" value="$anchor"/>
  <Header value="Known positive"/>
  <Text name="positive" value="$positive"/>
  <Header value="Flagged document ($kind, label quality $quality)"/>
  <Text name="candidate" value="$candidate"/>
  <Choices name="decision" toName="candidate" choice="single" showInLine="true">
    <Choice value="is_positive" hotkey="p"/>
    <Choice value="is_negative" hotkey="n"/>
    <Choice value="drop_pair" hotkey="d"/>
    <Choice value="skip" hotkey="s"/>
  </Choices>
  <TextArea name="comment" toName="candidate" rows="2" placeholder="Comment (optional)"/>
</View>
"""


def format_for(path: Path, fmt: str | None) -> ExportFormat:
    """The export format: `fmt` if given, else from the file suffix (.csv, .jsonl)."""
    if fmt is None:
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".json": "label-studio"}.get(path.suffix.lower())
        if fmt is None:
            raise InputError("cannot tell the export format from the suffix: pass --format", path=str(path))
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt  # type: ignore[return-value]


def export_pairs(views: Sequence[PairView], out: str | Path, *, output_format: ExportFormat) -> list[Path]:
    """Write `views` to `out` in `output_format`; returns the files written.

    Example:
        >>> export_pairs(list_pairs(engine, Filters(dataset="scifact")), "review.jsonl", output_format="argilla")
        ... # doctest: +SKIP
    """
    out = Path(out)
    records = [view.as_record() for view in views]
    if output_format == "csv":
        return [write_bytes_atomic(out, _csv(records))]
    if output_format == "jsonl":
        return [write_bytes_atomic(out, _jsonl(records))]
    if output_format == "argilla":
        return [write_bytes_atomic(out, _jsonl([argilla_record(r) for r in records]))]
    tasks = [label_studio_task(r) for r in records]
    config = out.with_name(f"{out.stem}.label-config.xml")
    return [
        write_bytes_atomic(out, json.dumps(tasks, ensure_ascii=False, indent=1).encode()),
        write_bytes_atomic(config, LABEL_STUDIO_CONFIG.encode()),
    ]


def _csv(records: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    names = list(records[0]) if records else ["id"]
    # csv's default "\r\n" (RFC 4180) also makes it quote a field holding a lone "\r";
    # with "\n" such a field went out bare and split the row for every reader.
    writer = csv.DictWriter(buffer, fieldnames=names)
    writer.writeheader()
    for record in records:
        writer.writerow({**record, "features": json.dumps(record["features"], ensure_ascii=False)})
    return buffer.getvalue().encode()


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def argilla_record(record: dict[str, Any]) -> dict[str, Any]:
    """One flat Argilla record: fields, the ``decision`` suggestion (if decided), metadata."""
    out: dict[str, Any] = {
        "id": f"{record['dataset']}:{record['version']}:{record['id']}",
        "anchor": record["anchor"],
        "positive": record["positive"] or "",
        "candidate": record["doc"],
    }
    if record["decision"] in DECISIONS:
        out["decision"] = record["decision"]
    out.update({key: record[key] for key in _METADATA if record[key] is not None})
    return out


def label_studio_task(record: dict[str, Any]) -> dict[str, Any]:
    """One Label Studio task; a decided pair carries its decision as an annotation."""
    data = {
        "anchor": record["anchor"],
        "positive": record["positive"] or "",
        "candidate": record["doc"],
        "pair_id": record["id"],
        **{key: record[key] for key in _METADATA},
    }
    task: dict[str, Any] = {"data": data}
    if record["decision"] in DECISIONS:
        task["annotations"] = [
            {
                "result": [
                    {
                        "from_name": "decision",
                        "to_name": "candidate",
                        "type": "choices",
                        "value": {"choices": [record["decision"]]},
                    }
                ]
            }
        ]
        task["meta"] = {"reviewer": record["reviewer"], "decided_at": record["decided_at"]}
    return task
