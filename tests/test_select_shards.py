"""Selection in shards of anchors (plan, shards, merge) gives the bytes of one pass over the table.

The stages before it run for real (read → search) on sample pairs with seeded random vectors;
some anchors get a second positive further down the pairs, so the pairs' order is not the
anchors' order and the merge must interleave the shards' view rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import PipelineConfig, SelectionConfig
from negminer.mining.difficulty import STAGE_STEMS, TIERS
from negminer.stages.refs import CurateRef
from tests.conftest import read_with_random_vectors

CONFIG = PipelineConfig.from_dict({"mine": {"search_depth": 12, "num_negatives": 3}})


@pytest.fixture(scope="module")
def searched(sample_dir: Path, tmp_path_factory) -> tuple[Path, CurateRef]:
    """A work folder searched (curation off): 37 anchors in 46 pairs, 6 of them out of anchor order."""
    folder = tmp_path_factory.mktemp("select-shards")
    inputs = folder / "inputs"
    inputs.mkdir()
    pairs = pq.read_table(sample_dir / "pairs.parquet").slice(0, 40)
    later, other = pairs.take([3, 11, 20, 0, 29, 7]), [9, 2, 33, 17, 5, 38]
    for column in ("positive_id", "positive"):  # those anchors get another row's positive too
        later = later.set_column(later.schema.get_field_index(column), column, pairs.column(column).take(other))
    pq.write_table(pa.concat_tables([pairs, later]), inputs / "pairs.parquet")
    shutil.copyfile(sample_dir / "corpus.parquet", inputs / "corpus.parquet")
    work, _, _ = read_with_random_vectors(inputs, folder, CONFIG, pairs=46)
    search = stages.search_stage(work, config=CONFIG.mine.retrieval, index_config=CONFIG.index)
    curate = stages.curate_stage(work, search, config=CONFIG.curate.model_copy(update={"enabled": False}))
    return work, curate


def single_pass(work: Path, curated: CurateRef, config: SelectionConfig, out: Path) -> dict:
    """The selection as one pass of derive_files over the whole table (what select_stage did)."""
    from negminer.curation.decisions import BatchedFeedback
    from negminer.mining.derive import with_pair_scores
    from negminer.mining.streaming import derive_files
    from negminer.stages.select import _split_training_pairs

    all_pairs = with_pair_scores(
        pq.read_table(work / "pairs.parquet"), *(np.load(work / f"{s}.npy") for s in ("anchors", "docs"))
    )
    pairs, held_out = _split_training_pairs(all_pairs, pq.read_table(curated.pairs).column("pair_idx"))
    anchors = pq.read_table(work / "anchors.parquet", columns=["anchor_id", "text"])
    docs = pq.read_table(work / "docs.parquet", columns=["doc_id", "text", "text_key"])
    decisions = pa.table({c: pa.array([], pa.string()) for c in ("anchor_id", "doc_id", "decision")})
    feedback = BatchedFeedback(
        decisions,
        schema=pq.read_schema(curated.candidates),
        anchors=anchors,
        docs=docs,
        pairs=pairs,
        extra_positives=False,
        held_out=held_out,
    )
    out.mkdir()
    stems = {"candidates": "selected", "triplets": "triplets", "scored": "scored", **{s: s for s in STAGE_STEMS}}
    derived = derive_files(
        curated.candidates,
        {stem: out / f"{name}.parquet" for stem, name in stems.items()},
        anchors=anchors,
        docs=docs,
        pairs=feedback.pairs,
        config=config,
        transform=feedback,
    )
    counts = {**derived.counts, "audit": feedback.counts}
    return {
        "paths": derived.paths,
        "counts": counts,
        "quantiles": derived.score_quantiles,
        "selection": derived.selection,
    }


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"output_curriculum": True, "output_scores": True},
        pytest.param(
            {"output_format": "n-tuple", "output_curriculum": True, "num_negatives": 2}, marks=pytest.mark.extended
        ),
        pytest.param(
            {"output_format": "n-tuple", "output_scores": True, "min_score_percentile": 20.0},
            marks=pytest.mark.extended,
        ),
        pytest.param(
            {"output_format": "labeled-pair", "output_scores": True, "sampling_strategy": "top"},
            marks=pytest.mark.extended,
        ),
        pytest.param(
            {"output_format": "labeled-list", "output_scores": True, "max_score_percentile": 90.0},
            marks=pytest.mark.extended,
        ),
        pytest.param({"output_scores": True, "strategy": "naive"}, marks=pytest.mark.extended),
    ],
)
def test_shards_give_the_bytes_of_one_pass(searched, tmp_path, options) -> None:
    work, curated = searched
    base = SelectionConfig(**{**CONFIG.mine.selection.model_dump(exclude={"strategy"}), **options})
    reference = single_pass(work, curated, base, tmp_path / "one-pass")
    for size, batch_rows in ((1000, None), (7, None), (2, 5)):
        config = base.model_copy(update={"select_shard_size": size})
        plan = stages.select_plan_stage(work, curated, config=config, batch_rows=batch_rows)
        assert len(plan.shards) == -(-37 // size), plan.shards
        select = stages.select_stage(work, curated, config=config, batch_rows=batch_rows)
        for stem, path in reference["paths"].items():
            assert Path(select.tables[stem]).read_bytes() == path.read_bytes(), (size, stem)
        assert select.counts == reference["counts"]
        assert list(select.counts["dropped_by_reason"]) == list(reference["counts"]["dropped_by_reason"])
        assert select.score_quantiles == reference["quantiles"] and select.selection == reference["selection"]
        assert not list(work.glob("*.part*")), "the merge removes the parts"


def test_a_killed_selection_reuses_its_finished_shards(searched, tmp_path, monkeypatch) -> None:
    import negminer.mining.sharded_select as sharded

    work, curated = searched
    config = CONFIG.mine.selection.model_copy(update={"select_shard_size": 10, "output_curriculum": True})
    whole = stages.select_stage(work, curated, config=config)
    expected = {stem: Path(path).read_bytes() for stem, path in whole.tables.items()}
    plan = stages.select_plan_stage(work, curated, config=config)
    for shard in plan.shards[:2]:  # killed after two of four shards
        stages.select_shard_stage(work, plan, shard, config=config)
    ran = []
    original = sharded.select_shard
    monkeypatch.setattr(sharded, "select_shard", lambda *a, **k: ran.append(a[2].first) or original(*a, **k))
    again = stages.select_stage(work, curated, config=config)
    assert ran == [20, 30], "only the unfinished shards ran again"
    assert {stem: Path(path).read_bytes() for stem, path in again.tables.items()} == expected
    assert again.counts == whole.counts and again.score_quantiles == whole.score_quantiles
    other = config.model_copy(update={"num_negatives": 2})
    keys = sorted(work.glob("select-*.npy"))
    written = {path: path.stat().st_mtime_ns for path in keys}
    assert len(keys) == 2, "the anchors' hashes and the docs' text groups"
    assert stages.select_plan_stage(work, curated, config=other).key != plan.key, "other settings: other parts"
    assert {path: path.stat().st_mtime_ns for path in keys} == written, "written once per work folder"


def test_a_cross_encoder_retrained_in_place_gets_other_parts(searched, tmp_path) -> None:
    work, curated = searched
    model = tmp_path / "judge"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"first weights")
    config = CONFIG.mine.selection.model_copy(update={"cross_encoder": str(model)})
    first = stages.select_plan_stage(work, curated, config=config).key
    assert stages.select_plan_stage(work, curated, config=config).key == first
    (model / "model.safetensors").write_bytes(b"retrained weights")
    assert stages.select_plan_stage(work, curated, config=config).key != first


def test_curriculum_stages_are_the_training_view_by_rising_difficulty(searched, tmp_path) -> None:
    work, curated = searched
    config = CONFIG.mine.selection.model_copy(
        update={"output_curriculum": True, "output_scores": True, "select_shard_size": 7}
    )
    select = stages.select_stage(work, curated, config=config)
    triplets = pq.read_table(select.tables["triplets"])
    scored = pq.read_table(select.tables["scored"])
    stages_ = [pq.read_table(select.tables[stem]) for stem in STAGE_STEMS]
    # every training row is in exactly one stage, in the training view's order, by its negative's tier
    for tier, stage in zip(TIERS, stages_, strict=True):
        assert stage.schema == triplets.schema
        assert stage == triplets.filter(pc.equal(scored.column("difficulty"), tier))
    assert sum(stage.num_rows for stage in stages_) == triplets.num_rows
    assert all(stage.num_rows for stage in stages_), [stage.num_rows for stage in stages_]
    # monotone: every negative of a later stage is closer to its positive than any of an earlier one
    selected = pq.read_table(select.tables["candidates"])
    chosen = selected.filter(pc.is_valid(selected.column("negative_slot")))
    margins = [
        chosen.filter(pc.equal(chosen.column("difficulty"), tier)).column("score_minus_positive").to_numpy()
        for tier in TIERS
    ]
    thresholds = select.selection["difficulty_thresholds"]
    assert margins[0].max() < thresholds["medium"] <= margins[1].min()
    assert margins[1].max() < thresholds["hard"] <= margins[2].min()
    assert select.counts["negatives_by_difficulty"] == {t: len(m) for t, m in zip(TIERS, margins, strict=True)}
    # the thresholds are the configured quantiles of every non-positive candidate's margin
    pool = selected.filter(pc.invert(selected.column("is_positive"))).column("score_minus_positive").to_numpy()
    assert [thresholds["medium"], thresholds["hard"]] == pytest.approx(np.quantile(pool, [0.5, 0.9]), abs=1e-6)
    assert selected.column("difficulty").null_count == (pc.sum(selected.column("is_positive")).as_py() or 0)


@pytest.mark.slow
def test_curriculum_stages_load_with_datasets_and_train_in_order(searched, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    from negminer.evaluation.train import fresh_model

    work, curated = searched
    config = CONFIG.mine.selection.model_copy(update={"output_curriculum": True})
    select = stages.select_stage(work, curated, config=config)
    model = fresh_model(None, device="cpu", max_seq_length=64)  # a copy: the session's model stays untrained
    loss = MultipleNegativesRankingLoss(model)
    before = next(model.parameters()).detach().clone()
    for stem in STAGE_STEMS:
        stage = datasets.load_dataset(
            "parquet", data_files=select.tables[stem], split="train", cache_dir=str(tmp_path / "cache")
        )
        assert stage.column_names == ["anchor", "positive", "negative"] and stage.num_rows >= 4, stem
        args = SentenceTransformerTrainingArguments(
            output_dir=str(tmp_path / stem),
            max_steps=1,
            per_device_train_batch_size=4,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            report_to="none",
            use_cpu=True,
        )
        result = SentenceTransformerTrainer(model=model, args=args, train_dataset=stage, loss=loss).train()
        assert result.global_step == 1 and np.isfinite(result.training_loss), stem
    assert not bool((next(model.parameters()) == before).all()), "the stages trained the model"


@pytest.fixture(scope="module")
def cross_encoder_folder(tmp_path_factory) -> Path:
    """The packaged MiniLM as a CrossEncoder with a seeded fresh head, saved: every load scores alike."""
    import torch
    from sentence_transformers import CrossEncoder

    from negminer.mining.encoder import resolve_model_path

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cross-encoder") / "model"
    CrossEncoder(str(resolve_model_path(None)), device="cpu").save(str(folder))
    return folder


@pytest.mark.slow
def test_a_cross_encoder_scores_the_rules_in_shards_as_in_one_pass(searched, tmp_path, cross_encoder_folder) -> None:
    work, curated = searched
    # the untrained head's scores lie close together: relative_margin 0.05 drops every candidate
    # here, a zero absolute margin (drop what scores above the positive) splits them
    options = {"cross_encoder": str(cross_encoder_folder), "range_max": 6, "absolute_margin": 0.0}
    base = SelectionConfig(
        **{**CONFIG.mine.selection.model_dump(exclude={"strategy"}), **options, "sampling_strategy": "top"}
    )
    reference = single_pass(work, curated, base, tmp_path / "one-pass")
    select = stages.select_stage(work, curated, config=base.model_copy(update={"select_shard_size": 10}))
    # the cross-encoder pads each batch of pairs to its longest, so a score can differ in its last
    # bits between shard sizes; the selection itself does not
    selected = pq.read_table(select.tables["candidates"]).to_pandas()
    one_pass = pq.read_table(reference["paths"]["candidates"]).to_pandas()
    scores = ["cross_encoder_score", "cross_encoder_positive_score"]
    assert selected.drop(columns=scores).equals(one_pass.drop(columns=scores))
    for column in scores:
        assert np.allclose(selected[column], one_pass[column], rtol=0, atol=1e-5, equal_nan=True)
    assert Path(select.tables["triplets"]).read_bytes() == reference["paths"]["triplets"].read_bytes()
    can_be_negative = (selected["rank"] < 6) & ~selected["is_positive"] & ~selected["same_text_as_positive"]
    can_be_negative &= ~selected["same_text_as_anchor"]
    assert selected["cross_encoder_score"].notna().equals(can_be_negative), "exactly the rows that could be chosen"
    chosen = selected[selected["negative_slot"].notna()]
    assert len(chosen) and (chosen["rank"] < 6).all()
    assert (chosen["cross_encoder_score"] <= chosen["cross_encoder_positive_score"]).all()
    dropped = selected[selected["reason"] == "absolute_margin"]
    assert len(dropped) and (dropped["cross_encoder_score"] > dropped["cross_encoder_positive_score"]).all()
    # the top order: each anchor's negatives are its best-scored eligible rows, best first
    for _, rows in chosen.groupby("anchor_idx"):
        assert rows.sort_values("negative_slot")["cross_encoder_score"].is_monotonic_decreasing
