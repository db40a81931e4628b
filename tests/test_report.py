"""The run report behind the Prefect artifacts, built from a version folder."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from negminer.report import run_report
from negminer.storage.versions import write_version


def test_report_counts_flags_and_top_flagged(tmp_path: Path) -> None:
    flagged = pa.table(
        {
            "kind": ["false_negative", "near_duplicate", "false_negative"],
            "quality_score": [0.4, 0.05, 0.2],
            "anchor_id": ["a1", "a2", "a3"],
            "features": [[0.1, 0.2], [0.3], []],
        }
    )
    counts = {"pairs_in": 10, "triplet_rows": 27, "dropped_by_reason": {"positive": 10, "surplus": 300}}
    manifest = {"name": "nightly", "counts": counts, "score_quantiles": {"negative": {"q50": 0.5}}}
    version = write_version(tmp_path, "nightly", tables={"flagged": flagged}, manifest=manifest)

    report = run_report(version, timings={"embed": {"seconds": 1.5, "cached": True}})

    assert report.flagged_total == 3
    assert [r["anchor_id"] for r in report.flagged] == ["a2", "a3", "a1"]  # lowest quality first
    assert report.flagged[0]["features"] == "[0.3]"
    assert report.link == version.resolve().as_uri()
    text = report.markdown
    assert text.startswith("# nightly v0001")
    assert "| surplus | 300 |" in text and "| false_negative | 2 |" in text and "| near_duplicate | 1 |" in text
    assert "| negative | 0.5 |" in text and "| embed | 1.50 | cached |" in text and "first version" in text


def test_report_without_flagged_file(tmp_path: Path) -> None:
    version = write_version(tmp_path, "ds", tables={"triplets": pa.table({"a": ["x"]})}, manifest={})
    report = run_report(version)
    assert report.flagged == [] and report.flagged_total == 0
    assert "## Flagged pairs by kind\n\nnone" in report.markdown
