"""Select stage: the strategy picks each anchor's negatives; the training views are written.

Planned, then selected in shards of anchors, then merged, so that the flow can map the shards
over Dask workers (:mod:`negminer.mining.sharded_select`, the same selection as
:func:`negminer.mining.streaming.derive_files`, which ``refilter`` uses, with the same bytes):
the plan scores the pairs, snapshots the reviewers' decisions, computes the difficulty
thresholds and cuts the candidates into ranges of ``mine.select_shard_size`` anchors; each
shard writes its parts and a completion marker (``select-KEY.partFIRST-STOP.json``), so a
killed run reuses the finished shards; the merge writes ``selected``, ``triplets``, ``scored``
and the curriculum stages from the parts and removes them.
Reviewers' decisions from the audit database are applied batch by batch
(:mod:`negminer.curation.decisions`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.config import SelectionConfig
from negminer.mining.allocator import releases_memory
from negminer.mining.difficulty import STAGE_STEMS
from negminer.stages.refs import CurateRef, SelectPartRef, SelectPlanRef, SelectRef, SelectShard
from negminer.stages.workdir import DOC_KEYS, doc_keys_file, finish, finished
from negminer.storage.atomic import naming_failures, sha256_file, write_npy_atomic, write_parquet_atomic

logger = logging.getLogger(__name__)

# select_negatives' keyword arrays, as the plan stores them (text groups: the docs all have text_key)
SELECTION_KEYS = ("anchor_hash", "doc_hash", "doc_text_group")
VIEW_NAMES = {"candidates": "selected", "triplets": "triplets", "scored": "scored", **{s: s for s in STAGE_STEMS}}


def select_stage(
    work_dir: str | Path, curated: CurateRef, *, config: SelectionConfig, batch_rows: int | None = None
) -> SelectRef:
    """Plan, select every shard, merge: what the flow runs as separate (mapped) tasks.

    `curated` names the candidates and the training pairs (the curation stage's output, or the
    search's candidates and every validated pair when curation is off). Each pair's cosine
    (from the vectors) is added to the pairs table. `batch_rows` is the candidate rows read at
    once (default :data:`negminer.mining.streaming.BATCH_ROWS`); the output does not depend on it.
    """
    plan = select_plan_stage(work_dir, curated, config=config, batch_rows=batch_rows)
    for shard in plan.shards:
        select_shard_stage(work_dir, plan, shard, config=config, batch_rows=batch_rows)
    return select_merge_stage(work_dir, plan, config=config, batch_rows=batch_rows)


@releases_memory
def select_plan_stage(
    work_dir: str | Path, curated: CurateRef, *, config: SelectionConfig, batch_rows: int | None = None
) -> SelectPlanRef:
    """Score the pairs, snapshot the decisions, compute the percentile bounds and cut the shards."""
    from negminer.mining.derive import with_pair_scores
    from negminer.mining.sharded_select import plan_selection
    from negminer.mining.streaming import BATCH_ROWS

    work_dir = Path(work_dir)
    start = time.perf_counter()
    given = pq.read_table(work_dir / "pairs.parquet")
    training = given if Path(curated.pairs) == work_dir / "pairs.parquet" else pq.read_table(curated.pairs)
    all_pairs = with_pair_scores(
        _given_and_relabelled_pairs(given, training),
        np.load(work_dir / "anchors.npy", mmap_mode="r"),
        np.load(work_dir / "docs.npy", mmap_mode="r"),
    )
    pairs, held_out = _split_training_pairs(all_pairs, training.column("pair_idx"))
    _write_selection_keys(work_dir)
    inputs = {
        "pairs": write_parquet_atomic(work_dir / "pairs-scored.parquet", pairs),
        "held_out": write_parquet_atomic(work_dir / "select-held-out.parquet", held_out),
        "decisions": write_parquet_atomic(work_dir / "select-decisions.parquet", _work_dir_decisions(work_dir)),
    }
    n_anchors = pq.ParquetFile(work_dir / "anchors.parquet").metadata.num_rows
    plan = plan_selection(
        curated.candidates,
        n_anchors=n_anchors,
        shard_anchors=config.select_shard_size,
        config=config,
        batch_rows=batch_rows or BATCH_ROWS,
    )
    return SelectPlanRef(
        candidates=curated.candidates,
        **{name: str(path) for name, path in inputs.items()},
        key=_plan_key(curated.candidates, list(inputs.values()), config),
        min_score_from_percentile=plan.bounds[0],
        max_score_from_percentile=plan.bounds[1],
        batched=plan.batched,
        difficulty_medium=plan.difficulty.medium,
        difficulty_hard=plan.difficulty.hard,
        shards=tuple(
            SelectShard(shard=i, first=s.first, stop=s.stop, row_first=s.row_first, row_stop=s.row_stop)
            for i, s in enumerate(plan.shards)
        ),
        seconds=round(time.perf_counter() - start, 3),
    )


def _write_selection_keys(work_dir: Path) -> None:
    """The ids' sampling hashes and the docs' text groups, once for every shard.

    Each shard memory-maps them (:func:`_selection_key_files`) instead of hashing every doc id
    and grouping every text key again: at 10M docs that is about 20 s and 1.7 GB a shard. The
    doc ids' hashes are the work folder's ``doc-keys.npy``, shared with the fused searches.
    """
    from negminer.mining.bm25 import id_hashes
    from negminer.mining.derive import text_groups

    doc_keys_file(work_dir)
    files = _selection_key_files(work_dir)  # the work folder's inputs never change: written once, like doc-keys
    if not files["anchor_hash"].exists():
        write_npy_atomic(files["anchor_hash"], id_hashes(work_dir / "anchors.parquet", "anchor_id"))
    if not files["doc_text_group"].exists():
        text_keys = pq.read_table(work_dir / "docs.parquet", columns=["text_key"])
        write_npy_atomic(files["doc_text_group"], text_groups(text_keys))


def _selection_key_files(work_dir: Path) -> dict[str, Path]:
    """select_negatives' keyword arrays by name, as files of the work folder."""
    names = {name: f"select-{name}.npy" for name in SELECTION_KEYS} | {"doc_hash": DOC_KEYS}
    return {name: work_dir / file for name, file in names.items()}


def _plan_key(candidates: str, inputs: list[Path], config: SelectionConfig) -> str:
    """Digest of what a shard's parts depend on: the files it reads and the settings."""
    digest = {
        "files": [sha256_file(path) for path in (candidates, *inputs)],
        "config": config.model_dump(mode="json", exclude={"select_shard_size"}),
    }
    if config.cross_encoder is not None:  # a model retrained in place must not reuse the old scores
        from negminer.mining.encoder import model_fingerprint

        digest["cross_encoder"] = model_fingerprint(Path(config.cross_encoder))
    return hashlib.sha256(json.dumps(digest, sort_keys=True).encode()).hexdigest()[:16]


def _part_stem(plan: SelectPlanRef, shard: SelectShard) -> str:
    return f"{plan.key}.part{shard.first:010d}-{shard.stop:010d}"


@releases_memory
def select_shard_stage(
    work_dir: str | Path,
    plan: SelectPlanRef,
    shard: SelectShard,
    *,
    config: SelectionConfig,
    batch_rows: int | None = None,
) -> SelectPartRef:
    """Select the anchors of one shard into its parts; a finished part (its marker) is reused."""
    from negminer.curation.decisions import BatchedFeedback
    from negminer.mining.difficulty import DifficultyThresholds
    from negminer.mining.rescore import load_rescorer, texts_of
    from negminer.mining.sharded_select import SelectionPlan, ShardRange, select_shard
    from negminer.mining.streaming import BATCH_ROWS
    from negminer.mining.views import view_stems
    from negminer.storage.mapped_columns import mapped_column

    work_dir = Path(work_dir)
    stem = _part_stem(plan, shard)
    marker = work_dir / f"select-{stem}.json"
    if ref := finished(marker, SelectPartRef):
        return ref
    start = time.perf_counter()
    anchors = pa.table({"anchor_id": mapped_column(work_dir / "anchors.parquet", "anchor_id")})
    docs = pa.table({"doc_id": mapped_column(work_dir / "docs.parquet", "doc_id")})
    anchor_texts, doc_texts = (mapped_column(work_dir / f"{s}.parquet", "text") for s in ("anchors", "docs"))
    feedback = BatchedFeedback(
        pq.read_table(plan.decisions),
        schema=pq.read_schema(plan.candidates),
        anchors=anchors,
        docs=docs,
        pairs=pq.read_table(plan.pairs),
        extra_positives=config.audit_extra_positives,
        held_out=pq.read_table(plan.held_out),
    )
    stems = ["candidates", *view_stems(config)]
    parts = {name: work_dir / f"{VIEW_NAMES[name]}.{stem}.parquet" for name in stems}
    bounds = (plan.min_score_from_percentile, plan.max_score_from_percentile)
    with naming_failures(work_dir):  # its staged writers' failed writes name no file
        result = select_shard(
            plan.candidates,
            parts,
            ShardRange(shard.first, shard.stop, shard.row_first, shard.row_stop),
            anchors=anchors,
            docs=docs,
            pairs=feedback.pairs,
            config=config,
            plan=SelectionPlan(
                bounds, plan.batched, [], DifficultyThresholds(plan.difficulty_medium, plan.difficulty_hard)
            ),
            anchor_texts=anchor_texts.slice(shard.first, shard.stop - shard.first).combine_chunks(),
            doc_texts=lambda wanted: doc_texts.take(pa.array(wanted, pa.int64())).combine_chunks(),
            transform=feedback,
            keys={name: np.load(path, mmap_mode="r") for name, path in _selection_key_files(work_dir).items()},
            rescore=load_rescorer(
                config, pairs=feedback.pairs, anchor_texts=texts_of(anchor_texts), doc_texts=texts_of(doc_texts)
            ),
            batch_rows=batch_rows or BATCH_ROWS,
        )
    ref = SelectPartRef(
        shard=shard.shard,
        first=shard.first,
        stop=shard.stop,
        parts={name: str(path) for name, path in parts.items()},
        rows=result.rows,
        negatives=result.negatives,
        anchors_short=result.anchors_short,
        reasons=tuple(result.reasons),
        audit=tuple((key, int(n)) for key, n in feedback.counts.items()),
        by_difficulty=tuple(result.by_difficulty.items()),
        seconds=round(time.perf_counter() - start, 3),
    )
    return finish(marker, ref)


@releases_memory
def select_merge_stage(
    work_dir: str | Path, plan: SelectPlanRef, *, config: SelectionConfig, batch_rows: int | None = None
) -> SelectRef:
    """Write selected/triplets[/scored] from the shards' parts; the manifest's figures.

    Shards without a finished part (a lost worker) are selected here first.
    """
    from negminer.curation.decisions import BatchedFeedback
    from negminer.mining.sharded_select import merge_reasons, merge_selection, merge_tier_counts

    work_dir = Path(work_dir)
    start = time.perf_counter()
    parts = [select_shard_stage(work_dir, plan, shard, config=config, batch_rows=batch_rows) for shard in plan.shards]
    out = {name: work_dir / f"{VIEW_NAMES[name]}.parquet" for name in parts[0].parts}
    with naming_failures(work_dir):
        rows, quantiles = merge_selection([part.parts for part in parts], out)
    _remove_parts(work_dir)
    audit = dict(parts[0].audit)
    for key in BatchedFeedback.PER_ROW:
        audit[key] = sum(dict(part.audit)[key] for part in parts)
    counts = {
        "triplet_rows": rows["triplets"],
        "negatives": sum(part.negatives for part in parts),
        "negatives_by_difficulty": merge_tier_counts([dict(part.by_difficulty) for part in parts]),
        "anchors_short": sum(part.anchors_short for part in parts),
        "dropped_by_reason": merge_reasons([list(part.reasons) for part in parts]),
        "audit": audit,
    }
    tables = {name: str(path) for name, path in out.items()}
    tables["pairs"] = plan.pairs
    seconds = time.perf_counter() - start + plan.seconds + sum(part.seconds for part in parts)
    return SelectRef(
        selected=tables["candidates"],
        triplets=tables["triplets"],
        tables=tables,
        counts=counts,
        selection={
            "min_score_from_percentile": plan.min_score_from_percentile,
            "max_score_from_percentile": plan.max_score_from_percentile,
            "difficulty_thresholds": {"medium": plan.difficulty_medium, "hard": plan.difficulty_hard},
        },
        score_quantiles=quantiles,
        seconds=round(seconds, 3),
    )


def _remove_parts(work_dir: Path) -> None:
    """Remove every selection part and part marker (this run's, and those of earlier, killed runs)."""
    for pattern in ("select-*.part*.json", *(f"{name}.*.part*.parquet" for name in VIEW_NAMES.values())):
        for path in work_dir.glob(pattern):
            path.unlink(missing_ok=True)


def _given_and_relabelled_pairs(given: pa.Table, training: pa.Table) -> pa.Table:
    """The read stage's pairs plus the extra positives curation relabelled (``false_negative_action: relabel``)."""
    if training is given:
        return given
    known = pc.is_in(training.column("pair_idx"), value_set=given.column("pair_idx").combine_chunks())
    extra = training.filter(pc.invert(known))
    return pa.concat_tables([given, extra.cast(given.schema)]) if extra.num_rows else given


def _split_training_pairs(all_pairs: pa.Table, training: pa.ChunkedArray) -> tuple[pa.Table, pa.Table]:
    """(training pairs, pairs curation held out of training), both from `all_pairs`; `training`: their pair_idx."""
    in_training = pc.is_in(all_pairs.column("pair_idx"), value_set=training.combine_chunks())
    return all_pairs.filter(in_training), all_pairs.filter(pc.invert(in_training))


def _work_dir_decisions(work_dir: Path) -> pa.Table:
    """Reviewers' decisions for the dataset of a work folder ``ROOT/NAME/.work/KEY`` (none otherwise)."""
    from negminer.audit.feedback import load_decisions

    work_dir = work_dir.resolve()
    if work_dir.parent.name != ".work":
        logger.debug("%s is not ROOT/NAME/.work/KEY: no audit decisions applied", work_dir)
        return pa.table({c: pa.array([], pa.string()) for c in ("anchor_id", "doc_id", "decision")})
    return load_decisions(work_dir.parents[2], work_dir.parents[1].name)
