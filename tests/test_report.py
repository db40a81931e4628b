"""The run report behind the Prefect artifacts, built from a version folder."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from negminer.report import health_warnings, run_report
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
    counts = {"pairs_in": 10, "triplet_rows": 27, "dropped_by_reason": {"selected": 27, "surplus": 300}}
    manifest = {"name": "nightly", "counts": counts, "score_quantiles": {"negative": {"q50": 0.5}}}
    version = write_version(tmp_path, "nightly", tables={"flagged": flagged}, manifest=manifest)

    report = run_report(version, timings={"embed": {"seconds": 1.5, "cached": True}})

    assert report.flagged_total == 3
    assert [r["anchor_id"] for r in report.flagged] == ["a2", "a3", "a1"]  # lowest quality first
    assert report.flagged[0]["features"] == "[0.3]"
    assert report.link == version.resolve().as_uri()
    text = report.markdown
    assert text.startswith("# nightly v0001")
    assert "## Candidates by outcome" in text and "Dropped" not in text and "| selected | 27 |" in text
    assert "| surplus | 300 |" in text and "| false_negative | 2 |" in text and "| near_duplicate | 1 |" in text
    assert "| negative | 0.5 |" in text and "| embed | 1.50 | cached |" in text and "first version" in text


def test_report_without_flagged_file(tmp_path: Path) -> None:
    version = write_version(tmp_path, "ds", tables={"triplets": pa.table({"a": ["x"]})}, manifest={})
    report = run_report(version)
    assert report.flagged == [] and report.flagged_total == 0
    assert "## Flagged pairs by kind\n\nnone" in report.markdown


def test_report_reads_only_the_flagged_file_of_a_version(tmp_path: Path, monkeypatch) -> None:
    big = pa.table({"anchor_id": ["a"] * 50, "doc_id": [f"d{i}" for i in range(50)], "score": [0.5] * 50})
    flagged = pa.table({"kind": ["false_negative"], "quality_score": [0.1], "anchor_id": ["a"]})
    tables = {"candidates": big, "docs": big, "triplets": big, "pairs": big, "flagged": flagged}
    version = write_version(tmp_path, "ds", tables=tables, manifest={})
    read = []
    read_table, parquet_file = pq.read_table, pq.ParquetFile
    monkeypatch.setattr(pq, "read_table", lambda path, **kw: read.append(Path(path).name) or read_table(path, **kw))
    monkeypatch.setattr(pq, "ParquetFile", lambda path, **kw: read.append(Path(path).name) or parquet_file(path, **kw))

    report = run_report(version)

    assert report.flagged_total == 1 and "| false_negative | 1 |" in report.markdown
    assert set(read) == {"flagged.parquet"}


def _curation_manifest(excluded: int, scored: int) -> dict:
    counts = {
        "anchors": 100,
        "anchors_short": 0,
        "curation": {"pairs_excluded": excluded, "pairs_scored": scored},
    }
    return {"counts": counts, "config": {"curate": {"false_positive_action": "quarantine"}}}


def test_many_positives_left_out_as_false_positives_warn_with_what_to_do() -> None:
    (warning,) = health_warnings(_curation_manifest(excluded=46, scored=100))
    assert warning.startswith("curation left 46 of 100 given positives (46%) out of training (quarantine")
    assert "curate.false_positive_action: keep" in warning and "negminer audit list --kind false_positive" in warning
    assert health_warnings(_curation_manifest(excluded=20, scored=100)) == []  # at the threshold: quiet


def test_short_anchors_rejected_rows_and_truncated_texts_warn() -> None:
    counts = {
        "anchors": 200,
        "anchors_short": 11,
        "rejected_rows": 3,
        "embedding": {
            "anchors": {"rows": 200, "truncated": 0},
            "docs": {"rows": 50, "truncated": 6},
            "queries": {"rows": 50, "truncated": -1},  # unknown token lengths
        },
    }
    warnings = health_warnings({"counts": counts, "config": {"mine": {"num_negatives": 5}}})
    assert len(warnings) == 3
    assert warnings[0].startswith("3 input rows were rejected") and "rejects.parquet" in warnings[0]
    assert warnings[1].startswith("11 of 200 anchors (6%) have fewer than 5 negatives")
    assert warnings[2].startswith("6 of 50 doc texts (12%) are longer than the model's max_seq_length")
    counts.update(anchors_short=10, rejected_rows=0, embedding={"docs": {"rows": 50, "truncated": 5}})
    assert health_warnings({"counts": counts}) == []  # 5% short and 10% truncated: at the thresholds


def test_report_lists_warnings_at_the_top(tmp_path: Path) -> None:
    version = write_version(tmp_path, "loose", tables={}, manifest=_curation_manifest(excluded=50, scored=100))
    report = run_report(version)
    assert report.warnings == health_warnings(_curation_manifest(excluded=50, scored=100))
    sections = report.markdown.split("\n\n")
    assert sections[2] == "## Warnings" and sections[3].startswith("- curation left 50 of 100 given positives")
    quiet = run_report(write_version(tmp_path, "clean", tables={}, manifest=_curation_manifest(excluded=1, scored=100)))
    assert quiet.warnings == [] and "## Warnings" not in quiet.markdown


def test_a_curation_that_judged_nothing_warns_with_its_reason() -> None:
    reason = "curation needs anchors in at least 2 cross-validation folds, ...: nothing judged"
    manifest = _curation_manifest(excluded=0, scored=1)
    manifest["counts"]["curation"]["skipped"] = 1
    manifest["noise"] = {"skipped": reason}
    assert health_warnings(manifest) == [reason]
    manifest["counts"]["curation"]["skipped"] = 0
    assert health_warnings(manifest) == []
