"""Curation in shards: judges fitted once, every anchor judged shard by shard (curation/sharded.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import CurateConfig, PipelineConfig
from negminer.curation.curate import anchor_families
from negminer.curation.sharded import CurationPaths, sample_anchors
from negminer.errors import ConfigError
from negminer.textkeys import KEY_BYTES, text_key

CONFIG = PipelineConfig.from_dict({"mine": {"search_depth": 30}})


@pytest.fixture(scope="module")
def searched(random_vector_run, tmp_path_factory) -> tuple[Path, str]:
    """The sample's 225 pairs read, with seeded random vectors, and searched 30 deep."""
    work, _, _ = random_vector_run(tmp_path_factory.mktemp("sharded"), CONFIG, pairs=225)
    search = stages.search_stage(work, config=CONFIG.mine, index_config=CONFIG.index)
    return work, search.candidates


def curate(searched, out: Path, **settings) -> tuple[CurationPaths, dict]:
    """The curate stage (plan, shards in order, merge) with `settings`; its outputs copied to `out`."""
    work, _ = searched
    search = stages.search_stage(work, config=CONFIG.mine, index_config=CONFIG.index)
    ref = stages.curate_stage(work, search, config=CurateConfig(**settings))
    out.mkdir()
    paths = CurationPaths(out / "curated.parquet", out / "flagged.parquet", out / "training-pairs.parquet")
    for source, target in zip((ref.candidates, ref.flagged, ref.pairs), paths, strict=True):
        shutil.copyfile(source, target)
    return paths, ref.counts["curation"]


def _flag_set(path: Path) -> set[tuple]:
    table = pq.read_table(path, columns=["kind", "anchor_idx", "doc_idx", "quality"])
    return set(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def test_shards_judge_every_row_as_one_pass_when_the_fit_sees_every_anchor(searched, tmp_path) -> None:
    one, one_counts = curate(searched, tmp_path / "one")
    sharded, counts = curate(searched, tmp_path / "sharded", fit_anchors=1000, shard_anchors=37)

    assert pq.read_table(sharded.curated).equals(pq.read_table(one.curated))
    assert _flag_set(sharded.flagged) == _flag_set(one.flagged)
    assert pq.read_table(sharded.training_pairs).equals(pq.read_table(one.training_pairs))
    assert counts == one_counts
    assert one_counts["false_negative"] > 0, "the comparison has flags to compare"
    quality = pq.read_table(sharded.flagged).to_pydict()
    for kind in ("false_negative", "near_duplicate"):
        values = [q for k, q in zip(quality["kind"], quality["quality"], strict=True) if k == kind]
        assert values == sorted(values), "most suspicious first within each kind"


def test_a_sampled_fit_judges_every_anchor(searched, tmp_path) -> None:
    _, one_counts = curate(searched, tmp_path / "one")
    sampled, counts = curate(searched, tmp_path / "sampled", fit_anchors=100, shard_anchors=50)

    curated = pq.read_table(sampled.curated)
    assert curated.drop_columns(["relevance", "flagged_false_negative"]).equals(pq.read_table(searched[1])), (
        "every candidate row, in order"
    )
    judged = curated.filter(curated.column("rank").to_numpy() < 30)
    assert judged.column("relevance").null_count == 0, "every anchor's window is judged"
    assert counts["rows_scored"] == one_counts["rows_scored"] and counts["skipped"] == 0
    assert counts["false_negative"] > 0


def test_the_sample_is_whole_families_drawn_by_text() -> None:
    family = np.array([0, 0, 2, 3, 4, 5, 6, 7])
    family_hash = np.array([9, 9, 1, 2, 3, 4, 5, 6], np.uint64)
    sample = sample_anchors(family, family_hash, limit=4, seed=3)
    assert 4 <= len(sample) <= 5 and list(sample) == sorted(sample)
    assert (0 in sample) == (1 in sample), "a family is drawn whole"
    reordered = sample_anchors(family[::-1], family_hash[::-1], limit=4, seed=3)
    assert sorted(family_hash[sample].tolist()) == sorted(family_hash[::-1][reordered].tolist())


def test_find_label_issues_needs_one_pass(searched, tmp_path) -> None:
    with pytest.raises(ConfigError, match="find_label_issues"):
        curate(searched, tmp_path / "x", fit_anchors=100, shard_anchors=50, issue_rule="find_label_issues")


def test_shards_judged_in_any_order_merge_to_the_same_bytes(searched, tmp_path) -> None:
    """Shards judged in any order (as Dask workers finish them) merge into the in-order run's bytes."""
    work, _ = searched
    config = CurateConfig(fit_anchors=100, shard_anchors=50)
    in_order, _ = curate(searched, tmp_path / "in-order", fit_anchors=100, shard_anchors=50)
    search = stages.search_stage(work, config=CONFIG.mine, index_config=CONFIG.index)
    plan = stages.curate_plan_stage(work, search, config=config)
    assert len(plan.shards) == 5 and plan.fit is not None
    parts = {shard.shard: stages.curate_shard_stage(work, plan, shard, config=config) for shard in plan.shards[::-1]}
    ref = stages.curate_merge_stage(work, plan, [parts[i] for i in range(5)], config=config)

    written = {"curated": ref.candidates, "flagged": ref.flagged, "training_pairs": ref.pairs}
    for name, path in written.items():
        assert Path(path).read_bytes() == getattr(in_order, name).read_bytes(), name
    assert not list(work.glob("*.part*")), "the parts are removed once merged"


def test_families_from_the_read_stages_keys_are_the_families_of_the_texts(searched) -> None:
    work, _ = searched
    anchors = pq.read_table(work / "anchors.parquet", columns=["text", "text_key"])
    texts = anchors.column("text").to_pylist()
    planted = ["What is X?", "Other", "what  is x?", "Other", "What is X?"]
    planted_keys = pa.array([text_key(t) for t in planted], pa.binary(KEY_BYTES))

    for words, keys in ((texts, anchors.column("text_key")), (planted, planted_keys)):
        by_text, by_key = anchor_families(words), anchor_families(words, keys=keys)
        assert all(np.array_equal(a, b) for a, b in zip(by_text, by_key, strict=True))
    assert anchor_families(planted, keys=planted_keys)[0].tolist() == [0, 1, 0, 1, 0]


def test_shards_running_at_once_share_one_load_of_the_fit_and_drop_it_after(searched, tmp_path, monkeypatch) -> None:
    """Two curation threads used to hold two copies of the fit's pool context (a gigabyte at 10M docs)."""
    from negminer.stages import curate as curate_module

    work, _ = searched
    config = CurateConfig(fit_anchors=100, shard_anchors=50)
    search = stages.search_stage(work, config=CONFIG.mine, index_config=CONFIG.index)
    plan = stages.curate_plan_stage(work, search, config=config)
    loads = []
    real_load = curate_module._load_shard_inputs
    monkeypatch.setattr(curate_module, "_load_shard_inputs", lambda *a: loads.append(a) or real_load(*a))
    shared = curate_module._SHARED

    with shared.use(work, plan.fit) as first, shared.use(work, plan.fit) as second:
        assert first is second and len(loads) == 1
        other_fit = tmp_path / "other-fit.pkl"
        shutil.copyfile(plan.fit, other_fit)
        with shared.use(work, str(other_fit)) as other:
            assert other is not first and len(loads) == 2, "another plan's shards load their own"
    assert not shared.loaded(), "nothing is kept once no shard runs"
    with shared.use(work, plan.fit):
        assert len(loads) == 3
