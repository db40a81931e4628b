"""docs/reference/ is generated from the code: it must match what the code gives now."""

from __future__ import annotations

from pathlib import Path

import pytest

from negminer import docs_reference
from negminer.docs_manifest import REJECT_REASONS, reject_codes_in_source


def test_the_committed_reference_is_what_the_code_gives() -> None:
    stale = docs_reference.stale_pages()
    assert not stale, f"docs/reference/{', '.join(stale)} stale: run `python -m negminer.docs_reference`"


def test_the_reference_covers_every_command_and_setting() -> None:
    from negminer.config import PipelineConfig

    pages = docs_reference.render()
    for command in ("negminer mine", "negminer refilter", "negminer verify", "negminer audit serve"):
        assert f"## `{command}`" in pages["cli.md"]
    for section, field in PipelineConfig.model_fields.items():
        model = docs_reference._model_of(field.annotation)
        for key in model.model_fields:
            assert f"| `{section}.{key}` |" in pages["configuration.md"]
    assert "| `counts.dropped_by_reason` |" in pages["manifest.md"]
    assert "| `relative_margin` |" in pages["reasons.md"] and "| `conflicting_id` |" in pages["reasons.md"]


def test_every_reject_reason_of_the_readers_is_described() -> None:
    assert reject_codes_in_source() == set(REJECT_REASONS)


def test_an_undescribed_code_stops_the_generator(monkeypatch) -> None:
    monkeypatch.setattr("negminer.docs_reference.REJECT_REASONS", {})
    with pytest.raises(KeyError, match="reject reason"):
        docs_reference.reasons_page()


def test_check_mode_names_a_stale_page(tmp_path: Path, capsys) -> None:
    assert docs_reference.main(["--folder", str(tmp_path)]) == 0
    assert docs_reference.main(["--check", "--folder", str(tmp_path)]) == 0
    (tmp_path / "cli.md").write_text("old\n")
    assert docs_reference.main(["--check", "--folder", str(tmp_path)]) == 1
    assert "cli.md is stale" in capsys.readouterr().err
