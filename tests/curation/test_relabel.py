"""false_negative_action: relabel — a flagged false negative becomes an extra positive of its anchor.

Stages for real (read → search → curate → select) on 225 sample pairs with seeded random
vectors, whose curation flags false negatives; every output format gets the relabelled pairs,
a reviewer's is_negative undoes one, and refilter refuses to switch the policy.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import CurateConfig, PipelineConfig
from negminer.curation.decisions import apply_decisions
from negminer.curation.reapply import PolicyChange
from negminer.errors import ConfigError

CONFIG = PipelineConfig.from_dict({"mine": {"search_depth": 30, "num_negatives": 2}})
RELABEL = CurateConfig(false_negative_action="relabel")


@pytest.fixture(scope="module")
def relabelled(random_vector_run, tmp_path_factory) -> tuple[Path, object]:
    work, _, _ = random_vector_run(tmp_path_factory.mktemp("relabel"), CONFIG, pairs=225)
    search = stages.search_stage(work, config=CONFIG.mine.retrieval, index_config=CONFIG.index)
    return work, stages.curate_stage(work, search, config=RELABEL)


def _relabelled_keys(work: Path, curated) -> set[tuple[int, int]]:
    flagged = pq.read_table(curated.flagged)
    fn = flagged.filter(pc.equal(flagged.column("kind"), "false_negative"))
    assert set(fn.column("action").to_pylist()) == {"relabel"}
    return set(zip(fn.column("anchor_idx").to_pylist(), fn.column("doc_idx").to_pylist(), strict=True))


def test_each_relabelled_candidate_is_an_extra_training_pair_and_no_negative(relabelled) -> None:
    work, curated = relabelled
    keys = _relabelled_keys(work, curated)
    given = pq.read_table(work / "pairs.parquet")
    training = pq.read_table(curated.pairs)
    extra = training.filter(pc.greater(training.column("pair_idx"), pc.max(given.column("pair_idx"))))

    assert len(keys) > 0 and curated.counts["curation"]["relabelled"] == len(keys)
    assert set(zip(extra.column("anchor_idx").to_pylist(), extra.column("doc_idx").to_pylist(), strict=True)) == keys
    first = pc.max(given.column("pair_idx")).as_py() + 1
    assert extra.column("pair_idx").to_pylist() == list(range(first, first + len(keys)))
    candidates = pq.read_table(curated.candidates)
    for anchor, doc in keys:
        row = candidates.filter(
            pc.and_(pc.equal(candidates.column("anchor_idx"), anchor), pc.equal(candidates.column("doc_idx"), doc))
        )
        assert row.column("flagged_false_negative").to_pylist() == [True]


@pytest.mark.parametrize("output_format", ["triplet", "labeled-pair", "labeled-list"])
def test_every_format_trains_on_the_relabelled_positives(relabelled, output_format) -> None:
    work, curated = relabelled
    keys = _relabelled_keys(work, curated)
    anchors = pq.read_table(work / "anchors.parquet", columns=["text"]).column("text").to_pylist()
    docs = pq.read_table(work / "docs.parquet", columns=["text"]).column("text").to_pylist()
    config = CONFIG.mine.selection.model_copy(update={"output_format": output_format})
    view = pq.read_table(stages.select_stage(work, curated, config=config).triplets).to_pylist()

    wanted = {(anchors[a], docs[d]) for a, d in keys}
    if output_format == "triplet":
        positives = {(r["anchor"], r["positive"]) for r in view}
        negatives = {(r["anchor"], r["negative"]) for r in view}
    elif output_format == "labeled-pair":
        positives = {(r["anchor"], r["document"]) for r in view if r["label"] == 1}
        negatives = {(r["anchor"], r["document"]) for r in view if r["label"] == 0}
    else:
        labelled = [(r["anchor"], t, y) for r in view for t, y in zip(r["documents"], r["labels"], strict=True)]
        positives = {(a, t) for a, t, y in labelled if y == 1}
        negatives = {(a, t) for a, t, y in labelled if y == 0}
    assert wanted <= positives
    assert not wanted & negatives


def test_a_reviewers_is_negative_takes_a_relabelled_pair_back(relabelled) -> None:
    work, curated = relabelled
    anchor, doc = min(_relabelled_keys(work, curated))
    anchors = pq.read_table(work / "anchors.parquet", columns=["anchor_id"])
    docs = pq.read_table(work / "docs.parquet", columns=["doc_id"])
    decision = pa.table(
        {
            "anchor_id": [anchors.column("anchor_id")[anchor].as_py()],
            "doc_id": [docs.column("doc_id")[doc].as_py()],
            "decision": ["is_negative"],
        }
    )
    training = pq.read_table(curated.pairs)
    feedback = apply_decisions(
        pq.read_table(curated.candidates), decision, anchors=anchors, docs=docs, pairs=training, extra_positives=False
    )
    pairs = feedback.pairs
    kept = set(zip(pairs.column("anchor_idx").to_pylist(), pairs.column("doc_idx").to_pylist(), strict=True))
    assert (anchor, doc) not in kept and feedback.counts["unflagged_candidates"] == 1


def test_relabel_is_for_false_negatives_and_refilter_will_not_switch_it(relabelled) -> None:
    with pytest.raises(ConfigError, match="near_duplicate_action: relabel"):
        PipelineConfig.from_dict({"curate": {"near_duplicate_action": "relabel"}})
    _, curated = relabelled
    flagged = pq.read_table(curated.flagged)
    with pytest.raises(NotImplementedError, match="run `negminer mine` with the new policy"):
        PolicyChange(flagged, CurateConfig(false_negative_action="drop"), n_docs=1000)
    PolicyChange(flagged, RELABEL, n_docs=1000)  # the same policy re-applied is fine
