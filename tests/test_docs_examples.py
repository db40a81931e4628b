"""The README's Python example and every command of docs/tutorial.md run as written.

Blocks fenced as ```bash (one command per line, ``#`` lines skipped) and ```python are
executed in order in a temporary folder that links the repository's ``examples/``, with the
virtual environment's ``negminer`` first on PATH, offline; ```text blocks are output and
synopses, not run. The tutorial mines the sample once and every later command works on that
version. When the CI's README command has already filled ``datasets/.embeddings`` in the
repository, the store is copied in, so mining embeds nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from negminer.docs_manifest import MANIFEST_FIELDS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def code_blocks(path: Path, *, languages: tuple[str, ...] = ("bash", "python")) -> list[tuple[str, str]]:
    """The fenced blocks of `path` in these languages, in order: (language, code)."""
    return [(lang, code) for lang, code in FENCE.findall(path.read_text()) if lang in languages]


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "examples").symlink_to(REPO / "examples")
    store = REPO / "datasets" / ".embeddings"
    if store.is_dir():
        shutil.copytree(store, tmp_path / "datasets" / ".embeddings")
    return tmp_path


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_block(lang: str, code: str, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run one block: each bash command on its own, a Python block as one script."""
    if lang == "python":
        commands = [[sys.executable, "-c", code]]
    else:
        lines = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        commands = [["bash", "-euo", "pipefail", "-c", line] for line in lines]
    results = []
    for command in commands:
        result = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
        shown = f"--- stdout\n{result.stdout[-2000:]}\n--- stderr\n{result.stderr[-4000:]}"
        assert result.returncode == 0, f"{command[-1]}\n{shown}"
        results.append(result)
    return results


def test_the_code_blocks_are_found() -> None:
    readme = code_blocks(REPO / "README.md")
    assert readme[0][0] == "bash" and readme[1][0] == "python", "the set-up commands, then the Python example"
    tutorial = code_blocks(REPO / "docs" / "tutorial.md")
    commands = [line.split()[:2] for lang, code in tutorial if lang == "bash" for line in code.splitlines()]
    assert ["negminer", "mine"] in commands and ["negminer", "refilter"] in commands
    assert ["negminer", "evaluate"] in commands


def test_the_readme_python_example_runs(tmp_path: Path) -> None:
    lang, code = code_blocks(REPO / "README.md", languages=("python",))[0]
    (result,) = run_block(lang, code, _folder(tmp_path))
    path = result.stdout.split()[0]
    assert Path(tmp_path / path / "manifest.json").exists(), result.stdout


def test_every_tutorial_command_runs(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    blocks = code_blocks(REPO / "docs" / "tutorial.md")
    (mined,) = run_block(*blocks[0], folder)
    assert mined.stdout.strip().splitlines()[-1] == "datasets/scifact-sample/v0001", "the version path, last"
    assert mined.stderr.splitlines()[-7].startswith("summary: 225 pairs in")
    manifest = (folder / "datasets" / "scifact-sample" / "v0001" / "manifest.json").read_text()
    _check_documented_keys(manifest)
    for lang, code in blocks[1:]:
        run_block(lang, code, folder)
    assert (folder / "datasets" / "scifact-sample" / "v0002" / "manifest.json").exists(), "the refilter step"
    assert (folder / "models" / "scifact-sample" / "final").is_dir(), "the training step"
    assert (folder / "evaluation.json").exists(), "the evaluation step"


def _check_documented_keys(manifest_text: str) -> None:
    import json

    manifest = json.loads(manifest_text)
    keys = [*manifest, *(f"counts.{key}" for key in manifest["counts"])]
    undocumented = [key for key in keys if key not in MANIFEST_FIELDS]
    assert not undocumented, f"describe {undocumented} in negminer/docs_manifest.py (docs/reference/manifest.md)"


@pytest.mark.extended  # two mines of the sample (the second with a new model embeds every text) and training
def test_the_remining_loop_runs(tmp_path: Path) -> None:
    import json

    folder = _folder(tmp_path)
    for lang, code in code_blocks(REPO / "docs" / "howto" / "remining.md"):
        run_block(lang, code, folder)
    dataset = folder / "datasets" / "scifact-loop"
    first, second = (json.loads((dataset / v / "manifest.json").read_text()) for v in ("v0001", "v0002"))
    assert "curriculum-3-hard.parquet" in first["files"] and "curriculum-3-hard.parquet" in second["files"]
    assert second["parent"] == "v0001" and second["model"]["fingerprint"] != first["model"]["fingerprint"]
    moved = second["changes"]["negatives"]
    assert moved["kept"] + moved["removed"] == first["counts"]["negatives"]
    assert moved["kept"] + moved["added"] == second["counts"]["negatives"]
    assert moved["added"] > 0, "a trained model chooses other negatives"
    kept = sum(n for row in moved["by_difficulty"]["kept"].values() for n in row.values())
    assert kept == moved["kept"]
