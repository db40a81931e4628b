"""refilter: a new dataset version from a stored candidate table, no embedding or search.

The parent version is written by the real stages (read → search → select → write) on 40
sample pairs with seeded random vectors in place of the model, so these tests stay fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from negminer import stages
from negminer.config import MineConfig, PipelineConfig
from negminer.errors import ConfigError, StorageError
from negminer.mining.difficulty import STAGE_STEMS
from negminer.refilter import refilter, refilter_config
from negminer.stages import select as select_module
from negminer.stages.refs import CurateRef
from negminer.storage.lineage import version_summaries
from negminer.storage.versions import latest_version, list_versions, read_manifest, verify_version, write_version

DEPTH = 20


def mine_without_model(random_vector_run, folder: Path, config: PipelineConfig) -> Path:
    """A complete version through the real stages, with seeded random unit vectors."""
    work, read, embed = random_vector_run(folder, config)
    search = stages.search_stage(work, config=config.mine, index_config=config.index)
    curate = stages.curate_stage(work, search, config=config.curate.model_copy(update={"enabled": False}))
    select = stages.select_stage(work, curate, config=config.mine)
    refs = stages.StageRefs(read=read, embed=embed, search=search, curate=curate, select=select)
    return Path(stages.publish_stage(work, folder / "out", "toy", config=config, refs=refs))


@pytest.fixture(scope="module")
def parent(random_vector_run, tmp_path_factory) -> Path:
    mine = {"search_depth": DEPTH, "num_negatives": 3, "output_scores": True, "output_curriculum": True}
    config = PipelineConfig.from_dict({"mine": mine})
    return mine_without_model(random_vector_run, tmp_path_factory.mktemp("refilter"), config)


@pytest.fixture
def version(parent: Path, tmp_path: Path) -> Path:
    """A private copy of the parent's dataset folder, so tests can add versions freely."""
    shutil.copytree(parent.parent, tmp_path / "out" / "toy")
    return tmp_path / "out" / "toy" / parent.name


def files(version: Path) -> dict[str, str]:
    return {name: info["sha256"] for name, info in read_manifest(version)["files"].items()}


def test_the_same_settings_give_the_same_bytes(version: Path):
    mine = refilter_config(version, num_negatives=3, output_scores=True, output_curriculum=True)
    result = refilter(version, mine=mine)
    assert result.path == version.parent / "v0002"
    stages_ = [f"{stem}.parquet" for stem in STAGE_STEMS]
    for name in ("triplets.parquet", "candidates.parquet", "scored.parquet", "pairs.parquet", *stages_):
        assert files(result.path)[name] == files(version)[name], name
    manifest = read_manifest(result.path)
    thresholds = manifest["selection"]["difficulty_thresholds"]
    assert thresholds == read_manifest(version)["selection"]["difficulty_thresholds"]
    moved = manifest["changes"]["negatives"]
    assert moved["added"] == moved["removed"] == 0 and moved["kept"] == manifest["counts"]["negatives"]
    kept = moved["by_difficulty"]["kept"]
    assert {tier: kept[tier][tier] for tier in kept} == manifest["counts"]["negatives_by_difficulty"]
    assert verify_version(result.path) == []


def test_auto_chooses_from_the_parents_noise_estimate(version: Path):
    """A parent whose curation estimated few relevant candidates: auto refilters as naive does."""
    manifest_path = version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["noise"] = {"negatives_relevant": 0.02, "positives_irrelevant": 0.0}
    manifest_path.write_text(json.dumps(manifest))
    auto = refilter(version, mine=refilter_config(version))
    naive = refilter(version, mine=refilter_config(version, strategy="naive"))
    assert files(auto.path)["triplets.parquet"] == files(naive.path)["triplets.parquet"]
    assert files(auto.path)["triplets.parquet"] != files(version)["triplets.parquet"]
    child = read_manifest(auto.path)
    assert child["config"]["mine"]["strategy"] == "auto"
    assert child["selection"]["auto_strategy"]["chosen"] == "naive"
    assert "auto_strategy" not in read_manifest(naive.path)["selection"]


def test_the_new_manifest_names_its_parent(version: Path):
    result = refilter(version, mine=refilter_config(version, strategy="semi-hard", semi_hard_margin=0.3))
    manifest = read_manifest(result.path)
    assert manifest["parent"] == version.name
    assert manifest["derived_from"]["version"] == version.name
    assert manifest["derived_from"]["by"] == "refilter"
    assert manifest["config"]["mine"]["strategy"] == "semi-hard"
    assert manifest["config"]["embed"] == read_manifest(version)["config"]["embed"]
    assert manifest["model"] == read_manifest(version)["model"]
    assert latest_version(version.parent) == result.path.name


def test_a_new_strategy_changes_the_selection_and_counts(version: Path):
    result = refilter(version, mine=refilter_config(version, strategy="semi-hard", semi_hard_margin=0.3))
    counts = read_manifest(result.path)["counts"]
    assert counts["dropped_by_reason"]["semi_hard_band"] > 0
    assert counts["dropped_by_reason"] == result.counts["dropped_by_reason"]
    candidates = pq.read_table(result.path / "candidates.parquet")
    chosen = candidates.filter(pc.is_valid(candidates.column("negative_slot")))
    margin = np.array(chosen.column("score_minus_positive").to_pylist())
    assert len(margin) and np.all((margin < 0) & (margin >= -0.3 - 1e-6))
    # the scored view and the curriculum are not carried over when the new settings do not ask for them
    assert "scored.parquet" not in files(result.path)
    assert not [name for name in files(result.path) if name.startswith("curriculum-")]
    assert files(result.path)["anchors.parquet"] == files(version)["anchors.parquet"]


def test_changes_are_against_the_parent_and_nothing_is_counted_as_embedded(version: Path):
    parent = read_manifest(version)
    result = refilter(version, mine=refilter_config(version, num_negatives=1))
    manifest = read_manifest(result.path)
    changes = manifest["changes"]
    rows = {"parent": parent["files"]["triplets.parquet"]["rows"], "new": manifest["files"]["triplets.parquet"]["rows"]}
    assert changes["parent"] == version.name
    assert changes["triplets"]["removed"] > 0
    assert changes["triplets"]["kept"] + changes["triplets"]["removed"] == rows["parent"]
    assert changes["triplets"]["kept"] + changes["triplets"]["added"] == rows["new"]
    assert changes["pairs"] == {"added": 0, "removed": 0, "kept": parent["counts"]["pairs"]}
    assert parent["counts"]["embedding"]["anchors"]["embedded"] > 0
    for stem, tally in manifest["counts"]["embedding"].items():
        assert tally == {**parent["counts"]["embedding"][stem], "embedded": 0, "reused": tally["rows"]}
    summary = version_summaries(version.parent)[-1]
    assert (summary.embedded, summary.removed) == (0, changes["triplets"]["removed"])


def test_refilter_neither_embeds_nor_searches(version: Path, monkeypatch):
    import negminer.mining.encoder as encoder
    import negminer.mining.search as search

    def forbidden(*args, **kwargs):
        raise AssertionError("refilter must not embed or search")

    monkeypatch.setattr(encoder, "load_model", forbidden)
    monkeypatch.setattr(search, "search_candidates", forbidden)
    assert refilter(version, mine=refilter_config(version, strategy="positive-aware")).path.exists()


def test_curation_flags_on_the_stored_candidates_drop_their_rows(version: Path, tmp_path: Path):
    candidates = pq.read_table(version / "candidates.parquet")
    slot = candidates.column("negative_slot").to_pylist()
    flagged = pa.array([s == 1 for s in slot])
    tables = {p.stem: pq.read_table(p) for p in version.glob("*.parquet")}
    tables["candidates"] = candidates.append_column("flagged_false_negative", flagged)
    manifest = {k: v for k, v in read_manifest(version).items() if k != "files"}
    curated = write_version(tmp_path / "cur", "toy", tables=tables, manifest=manifest)
    result = refilter(curated, mine=refilter_config(curated, num_negatives=3))
    after = pq.read_table(result.path / "candidates.parquet")
    reasons = after.column("reason").to_pylist()
    assert [r for r, f in zip(reasons, flagged.to_pylist(), strict=True) if f] == ["false_negative"] * sum(
        flagged.to_pylist()
    )
    assert "flagged_false_negative" in after.column_names
    assert result.counts["anchors_short"] == read_manifest(version)["counts"]["anchors_short"]


def test_writing_under_another_name_records_the_parent_path(version: Path, tmp_path: Path):
    result = refilter(version, mine=refilter_config(version), root=tmp_path / "elsewhere", name="strict")
    assert result.path == tmp_path / "elsewhere" / "strict" / "v0001"
    assert read_manifest(result.path)["parent"] == str(version.resolve())


def test_refilter_config_reads_the_yaml_mine_section_with_overrides(version: Path, tmp_path: Path):
    path = tmp_path / "new.yaml"
    path.write_text("mine:\n  strategy: positive-aware\n  relative_margin: 0.1\n  num_negatives: 2\n")
    mine = refilter_config(version, path, num_negatives=4, strategy=None)
    assert (mine.strategy, mine.relative_margin, mine.num_negatives, mine.search_depth) == (
        "positive-aware",
        0.1,
        4,
        DEPTH,
    )


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("mine:\n  search_depth: 500\n", "search_depth"),
        ("embed:\n  max_seq_length: 64\n", "embed"),
        ("mine:\n  range_max: 500\n", "range_max"),
        ("mine:\n  strategy: strictest\n", "strategy"),
    ],
)
def test_refilter_config_refuses_what_needs_a_new_mine_run(version: Path, tmp_path: Path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        refilter_config(version, path)


def test_a_depth_other_than_the_stored_one_is_refused(version: Path):
    with pytest.raises(ConfigError, match="search_depth"):
        refilter(version, mine=MineConfig(search_depth=DEPTH + 1))


def test_an_unsound_or_incomplete_version_is_refused(version: Path, tmp_path: Path):
    with (version / "triplets.parquet").open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(StorageError, match="unsound"):
        refilter(version, mine=refilter_config(version))
    bare = write_version(tmp_path / "bare", "toy", tables={"triplets": pa.table({"a": [1]})}, manifest={})
    with pytest.raises(StorageError, match=r"candidates\.parquet"):
        refilter(bare, mine=MineConfig())


def test_a_bad_dataset_name_is_refused_before_any_work(version: Path):
    from negminer.cli import app

    root = version.parent.parent
    with pytest.raises(ConfigError, match=r"dataset name 'pairs \(1\)' must be letters"):
        refilter(version, mine=refilter_config(version), name="pairs (1)")
    result = CliRunner().invoke(app, ["refilter", str(version), "--name", "a/b"])
    assert isinstance(result.exception, ConfigError), result.exception
    assert sorted(p.name for p in root.iterdir()) == ["toy"]
    assert list_versions(version.parent) == [version.name]


def test_cli_refilter_prints_the_new_version_last(version: Path, tmp_path: Path):
    from negminer.cli import app

    path = tmp_path / "semi.yaml"
    path.write_text("mine:\n  strategy: semi-hard\n  semi_hard_margin: 0.3\n")
    result = CliRunner().invoke(app, ["refilter", str(version), "--config", str(path), "--num-negatives", "2"])
    assert result.exit_code == 0, result.output
    new = Path(result.stdout.strip().splitlines()[-1])
    assert new == version.parent / "v0002"
    assert read_manifest(new)["config"]["mine"]["num_negatives"] == 2


def test_cli_mine_has_a_strategy_option():
    from negminer.cli import app

    result = CliRunner().invoke(app, ["mine", "--help"])
    assert result.exit_code == 0 and "--strategy" in result.stdout


def test_a_held_out_positive_confirmed_by_a_reviewer_is_trained_on_again(version: Path, tmp_path: Path, monkeypatch):
    tables = {p.stem: pq.read_table(p) for p in version.glob("*.parquet")}
    pairs, anchors, docs = tables["pairs"], tables["anchors"], tables["docs"]
    held = pairs.slice(0, 1).to_pylist()[0]
    tables["pairs"] = pairs.slice(1)
    tables["flagged"] = pa.table(
        {
            "kind": ["false_positive"],
            "action": ["quarantine"],
            "anchor_id": [anchors["anchor_id"][held["anchor_idx"]].as_py()],
            "doc_id": [docs["doc_id"][held["doc_idx"]].as_py()],
            "anchor_idx": pa.array([held["anchor_idx"]], pa.int32()),
            "doc_idx": pa.array([held["doc_idx"]], pa.int32()),
            "pair_idx": pa.array([held["pair_idx"]], pa.int32()),
            "feature_score": pa.array([0.5], pa.float32()),
        }
    )
    manifest = {k: v for k, v in read_manifest(version).items() if k != "files"}
    curated = write_version(tmp_path / "cur", "toy", tables=tables, manifest=manifest)
    pair_texts = (anchors["text"][held["anchor_idx"]].as_py(), docs["text"][held["doc_idx"]].as_py())

    def trained_on(decision: str) -> bool:
        table = pa.table({"anchor_id": [tables["flagged"]["anchor_id"][0].as_py()]})
        table = table.append_column("doc_id", tables["flagged"]["doc_id"]).append_column("decision", [[decision]])
        monkeypatch.setattr("negminer.audit.feedback.load_decisions", lambda root, name: table)
        result = refilter(curated, mine=refilter_config(curated))
        triplets = pq.read_table(result.path / "triplets.parquet")
        return pair_texts in set(zip(triplets["anchor"].to_pylist(), triplets["positive"].to_pylist(), strict=True))

    assert not trained_on("skip")
    assert trained_on("is_positive")


def test_select_stage_puts_back_a_held_out_positive_a_reviewer_confirmed(
    random_vector_run, tmp_path: Path, monkeypatch
):
    config = PipelineConfig.from_dict({"mine": {"search_depth": DEPTH, "num_negatives": 3}})
    work = mine_without_model(random_vector_run, tmp_path, config).parents[2] / "work"
    pairs = pq.read_table(work / "pairs.parquet")
    held = pairs.slice(0, 1).to_pylist()[0]
    pq.write_table(pairs.slice(1), work / "training-pairs.parquet")  # as curation writes it
    anchors, docs = pq.read_table(work / "anchors.parquet"), pq.read_table(work / "docs.parquet")
    ids = (anchors["anchor_id"][held["anchor_idx"]].as_py(), docs["doc_id"][held["doc_idx"]].as_py())
    texts = (anchors["text"][held["anchor_idx"]].as_py(), docs["text"][held["doc_idx"]].as_py())

    def trained_on(decision: str) -> bool:
        table = pa.table({"anchor_id": [ids[0]], "doc_id": [ids[1]], "decision": [decision]})
        monkeypatch.setattr(select_module, "_work_dir_decisions", lambda work_dir: table)
        search = stages.search_stage(work, config=config.mine, index_config=config.index)
        curated = CurateRef(candidates=search.candidates, pairs=str(work / "training-pairs.parquet"))
        triplets = pq.read_table(stages.select_stage(work, curated, config=config.mine).triplets)
        return texts in set(zip(triplets["anchor"].to_pylist(), triplets["positive"].to_pylist(), strict=True))

    assert not trained_on("skip")
    assert trained_on("is_positive")


def _curated_version(version: Path, tmp_path: Path) -> Path:
    """The version as curation would leave it: each anchor's first choice flagged a near-duplicate
    and dropped, the first pair flagged a false positive and quarantined (out of the pairs)."""
    tables = {p.stem: pq.read_table(p) for p in version.glob("*.parquet")}
    candidates = tables["candidates"]
    first_choice = pc.equal(candidates.column("negative_slot"), 1)
    tables["candidates"] = candidates.append_column("flagged_false_negative", pc.fill_null(first_choice, False))
    near = candidates.filter(pc.fill_null(first_choice, False))
    pairs = tables["pairs"]
    wrong = pairs.slice(0, 1)
    tables["pairs"] = pairs.slice(1)
    rows = {
        "kind": ["near_duplicate"] * near.num_rows + ["false_positive"],
        "action": ["drop"] * near.num_rows + ["quarantine"],
        "anchor_id": [*near.column("anchor_id").to_pylist(), None],
        "doc_id": [*near.column("doc_id").to_pylist(), None],
        "anchor_idx": near.column("anchor_idx").to_pylist() + wrong.column("anchor_idx").to_pylist(),
        "doc_idx": near.column("doc_idx").to_pylist() + wrong.column("doc_idx").to_pylist(),
        "pair_idx": [None] * near.num_rows + wrong.column("pair_idx").to_pylist(),
        "quality": [0.1] * (near.num_rows + 1),
        "feature_score": [0.5] * (near.num_rows + 1),
    }
    types = {"anchor_idx": pa.int32(), "doc_idx": pa.int32(), "pair_idx": pa.int32(), "feature_score": pa.float32()}
    tables["flagged"] = pa.table({k: pa.array(v, types.get(k)) for k, v in rows.items()})
    manifest = {k: v for k, v in read_manifest(version).items() if k != "files"}
    return write_version(tmp_path / "cur", "toy", tables=tables, manifest=manifest)


def test_new_curation_policies_are_applied_to_the_stored_flags(version: Path, tmp_path: Path):
    from negminer.refilter import refilter_policies

    curated = _curated_version(version, tmp_path)
    dropped = refilter(curated, mine=refilter_config(curated, num_negatives=3))
    assert "false_negative" in pq.read_table(dropped.path / "candidates.parquet").column("reason").to_pylist()

    policy = tmp_path / "keep.yaml"
    policy.write_text("curate:\n  near_duplicate_action: keep\n  false_positive_action: keep\n")
    curation = refilter_policies(curated, policy)
    kept = refilter(curated, mine=refilter_config(curated, policy, num_negatives=3), curation=curation)

    assert "false_negative" not in pq.read_table(kept.path / "candidates.parquet").column("reason").to_pylist()
    assert sorted(set(pq.read_table(kept.path / "flagged.parquet").column("action").to_pylist())) == ["keep"]
    wrong_pair = pq.read_table(curated / "flagged.parquet").column("pair_idx").to_pylist()[-1]
    assert wrong_pair in pq.read_table(kept.path / "pairs.parquet").column("pair_idx").to_pylist()
    assert wrong_pair not in pq.read_table(dropped.path / "pairs.parquet").column("pair_idx").to_pylist()
    curate = read_manifest(kept.path)["config"]["curate"]
    assert (curate["near_duplicate_action"], curate["false_positive_action"]) == ("keep", "keep")
    policies = read_manifest(kept.path)["policies"]
    assert (policies["near_duplicate_action"], policies["false_positive_action"]) == ("keep", "keep")
    assert refilter_policies(curated, None) is None


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("mien:\n  strategy: naive\n", "unknown key 'mien'"),
        ("curate:\n  false_negative_actoin: keep\n", "false_negative_actoin"),
        ("index:\n  kind: HNSW32\n", "cannot change index.kind"),
        ("curate:\n  max_rank: 5\n", "cannot change curate.max_rank"),
        ("mine:\n  search_batch_size: 7\n  num_negatives: 2\n", "cannot change mine.search_batch_size"),
    ],
)
def test_refilter_config_names_unknown_keys_and_settings_it_cannot_apply(version, tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        refilter_config(version, path)
