"""A version's ``diagnostics``: from the run's stored vectors and tables, recomputed here directly.

The stages run for real (read → search → curate → select → publish) on 40 sample pairs with
seeded random vectors in place of the model (tests/conftest.py), so these tests stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import PipelineConfig
from negminer.evaluation.diagnostics import unlabelled_positive_share
from negminer.report import run_report
from negminer.storage.versions import read_manifest

CONFIG = PipelineConfig.from_dict({"mine": {"search_depth": 20, "num_negatives": 3}, "diagnostics": {"sample": 5000}})


@pytest.fixture(scope="module")
def published(random_vector_run, tmp_path_factory) -> dict[str, Any]:
    """One curated run of 40 pairs, published; its work folder and version."""
    folder = tmp_path_factory.mktemp("diagnostics")
    work, read, embed = random_vector_run(folder, CONFIG)
    search = stages.search_stage(work, config=CONFIG.mine.retrieval, index_config=CONFIG.index)
    curate = stages.curate_stage(work, search, config=CONFIG.curate)
    select = stages.select_stage(work, curate, config=CONFIG.mine.selection)
    refs = stages.StageRefs(read=read, embed=embed, search=search, curate=curate, select=select)
    version = Path(stages.publish_stage(work, folder / "out", "toy", config=CONFIG, refs=refs))
    return {"work": work, "version": version, "manifest": read_manifest(version)}


def test_alignment_and_uniformity_are_those_of_the_stored_vectors(published) -> None:
    work, diagnostics = published["work"], published["manifest"]["diagnostics"]
    anchors, docs = np.load(work / "anchors.npy").astype(np.float64), np.load(work / "docs.npy").astype(np.float64)
    pairs = pq.read_table(work / "pairs.parquet")
    x, y = anchors[pairs["anchor_idx"].to_numpy()], docs[pairs["doc_idx"].to_numpy()]
    expected_alignment = np.mean(np.sum((x - y) ** 2, axis=1))  # the vectors are unit already
    every = np.concatenate([anchors, docs])  # the sample (5000) holds every vector
    i, j = np.triu_indices(len(every), k=1)
    expected_uniformity = np.log(np.mean(np.exp(-2 * np.sum((every[i] - every[j]) ** 2, axis=1))))

    assert diagnostics["alignment"] == pytest.approx(expected_alignment, abs=1e-6)
    assert diagnostics["uniformity"] == pytest.approx(expected_uniformity, abs=1e-6)
    assert diagnostics["alignment_pairs"] == pairs.num_rows == 40
    assert diagnostics["uniformity_vectors"] == len(every) and diagnostics["uniformity_pairs"] == len(i)
    histograms = diagnostics["histograms"]
    assert sum(histograms["positive"]) == 40 and sum(histograms["random"]) == len(i)
    assert sum(histograms["negative"]) == published["manifest"]["counts"]["negatives"]


def test_the_unlabelled_positive_share_counts_curations_flags(published) -> None:
    version, share = published["version"], published["manifest"]["diagnostics"]["unlabelled_positives"]
    candidates = pq.read_table(version / "candidates.parquet").to_pylist()
    flagged = pq.read_table(version / "flagged.parquet").to_pylist()
    judged = {(r["anchor_idx"], r["doc_idx"]) for r in flagged if r["kind"] in ("false_negative", "near_duplicate")}
    unlabelled = [
        (c["anchor_idx"], c["doc_idx"])
        for c in candidates
        if not (c["is_positive"] or c["same_text_as_positive"] or c["same_text_as_anchor"])
    ]
    hits = sum(key in judged for key in unlabelled)

    assert judged, "random vectors on 40 anchors: curation flags some candidates"
    assert share == {"candidates": len(unlabelled), "judged_relevant": hits, "rate": round(hits / len(unlabelled), 6)}
    assert "by_source" not in share


def test_the_share_is_given_per_source_when_candidates_name_one(published, tmp_path: Path) -> None:
    version = published["version"]
    table = pq.read_table(version / "candidates.parquet")
    source = ["bm25" if i % 3 == 0 else "dense" for i in range(table.num_rows)]
    pq.write_table(table.append_column("source", pa.array(source)), tmp_path / "candidates.parquet")

    share = unlabelled_positive_share(tmp_path / "candidates.parquet", version / "flagged.parquet", batch_rows=17)

    overall = published["manifest"]["diagnostics"]["unlabelled_positives"]
    assert {k: share[k] for k in overall} == overall, "batch size and the extra column change nothing overall"
    parts = share["by_source"]
    assert sorted(parts) == ["bm25", "dense"]
    assert sum(p["candidates"] for p in parts.values()) == overall["candidates"]
    assert sum(p["judged_relevant"] for p in parts.values()) == overall["judged_relevant"]


def test_the_run_report_shows_them(published) -> None:
    markdown = run_report(published["version"]).markdown
    diagnostics = published["manifest"]["diagnostics"]
    assert "## Embedding diagnostics" in markdown
    assert f"| alignment (lower: positives closer) | {diagnostics['alignment']} |" in markdown
    assert "candidates judged relevant" in markdown and "random   |" in markdown


def test_diagnostics_can_be_turned_off(random_vector_run, tmp_path: Path) -> None:
    config = PipelineConfig.from_dict({"mine": {"search_depth": 20}, "diagnostics": {"enabled": False}})
    work, read, embed = random_vector_run(tmp_path, config)
    search = stages.search_stage(work, config=config.mine.retrieval, index_config=config.index)
    curate = stages.curate_stage(work, search, config=config.curate.model_copy(update={"enabled": False}))
    select = stages.select_stage(work, curate, config=config.mine.selection)
    refs = stages.StageRefs(read=read, embed=embed, search=search, curate=curate, select=select)
    version = Path(stages.publish_stage(work, tmp_path / "out", "toy", config=config, refs=refs))
    assert read_manifest(version)["diagnostics"] is None
    assert "## Embedding diagnostics" not in run_report(version).markdown


def test_refilter_keeps_the_geometry_and_recounts_the_new_negatives(published) -> None:
    import negminer

    parent = published["manifest"]["diagnostics"]
    child = negminer.refilter(published["version"], num_negatives=1)
    diagnostics = child.manifest["diagnostics"]

    assert child.counts["negatives"] < published["manifest"]["counts"]["negatives"]
    assert sum(diagnostics["histograms"]["negative"]) == child.counts["negatives"]
    same = ("alignment", "uniformity", "alignment_pairs", "uniformity_vectors", "unlabelled_positives")
    assert {k: diagnostics[k] for k in same} == {k: parent[k] for k in same}, "same vectors, candidates, flags"
    assert diagnostics["histograms"]["random"] == parent["histograms"]["random"]
