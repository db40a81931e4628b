"""The summary `negminer mine` prints on stderr, from a version's manifest."""

from __future__ import annotations

import json
from pathlib import Path

from negminer.summary import mine_summary

COUNTS = {
    "pairs_in": 12,
    "rejected_rows": 2,
    "pairs": 10,
    "anchors": 9,
    "docs": 40,
    "negatives": 26,
    "anchors_short": 1,
    "triplet_rows": 28,
    "dropped_by_reason": {"positive": 10, "selected": 26, "surplus": 300, "false_negative": 7, "relative_margin": 20},
    "flagged_by_kind": {"false_negative": 7, "false_positive": 3, "near_duplicate": 1},
    "curation": {"false_positive": 3, "pairs_excluded": 3, "negatives_excluded": 7, "pairs_scored": 10},
}


def _version(tmp_path: Path, counts: dict, curate: dict) -> Path:
    version = tmp_path / "root" / "toy" / "v0001"
    version.mkdir(parents=True)
    manifest = {"name": "toy", "version": "v0001", "counts": counts, "config": {"curate": curate}}
    (version / "manifest.json").write_text(json.dumps(manifest))
    return version


def test_the_summary_says_what_went_in_what_came_out_and_where_to_look(tmp_path: Path) -> None:
    version = _version(tmp_path, COUNTS, {"enabled": True, "false_positive_action": "quarantine"})
    lines = mine_summary(version, root="root")

    assert lines[0] == (
        "summary: 12 pairs in (2 rejected), 40 documents -> 28 training rows, 26 negatives for 9 anchors "
        "(1 short of negatives)"
    )
    assert lines[1] == (
        "  candidates: 363 retrieved, 26 chosen, 300 eligible but not sampled; "
        "dropped: relative_margin 20, false_negative 7"
    )
    assert lines[2] == (
        "  given positives: 10; 3 flagged as likely wrong (false_positive): 7 kept, 3 excluded "
        "(false_positive_action: quarantine)"
    )
    assert lines[3].startswith("  flagged: false_negative 7, false_positive 3, near_duplicate 1 (")
    assert "prefect artifact inspect negminer-toy-report" in lines[4] and str(version / "manifest.json") in lines[4]
    assert lines[5].startswith("  review: negminer audit serve --root root ")


def test_without_curation_every_given_positive_is_kept(tmp_path: Path) -> None:
    counts = {k: v for k, v in COUNTS.items() if k not in ("curation", "flagged_by_kind")}
    lines = mine_summary(_version(tmp_path, counts, {"enabled": False}))
    assert lines[2] == "  given positives: 10, all kept (curation off)"
    assert lines[3].startswith("  flagged: none (")
    assert f"--root {tmp_path / 'root'} " in lines[5], "the version's grandparent by default"


def test_the_choices_of_auto_have_their_line(tmp_path: Path) -> None:
    version = _version(tmp_path, COUNTS, {"enabled": True, "false_negative_action": "auto"})
    manifest = json.loads((version / "manifest.json").read_text())
    choice = {"chosen": "naive", "reason": "few", "negatives_relevant": 0.0157, "auto_naive_below": 0.1}
    manifest["selection"] = {"auto_strategy": choice}
    manifest["noise"] = {"negatives_relevant": 0.0157}
    manifest["policies"] = {"false_negative_action": "keep"}
    (version / "manifest.json").write_text(json.dumps(manifest))
    lines = mine_summary(version)
    assert lines[2] == (
        "  auto: strategy naive, flagged false negatives kept as negatives, for review "
        "(curation estimates 1.6% of the candidates relevant)"
    )
    assert lines[3].startswith("  given positives: 10;")
