"""Decisions feed the next selection: exclusions, dropped pairs, extra positives, counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer.audit.feedback import load_decisions
from negminer.audit.loader import load_version
from negminer.audit.queries import Filters, list_pairs, record_decision
from negminer.config import MineConfig
from negminer.curation.decisions import EXCLUDED_COLUMN, apply_decisions, unflag_decided
from negminer.errors import InputError
from negminer.mining.derive import SELECT_OPTIONS
from negminer.mining.strategies import select_negatives, stable_hash64

DATASET = "scifact-audit"  # the dataset conftest.py builds


def read(version_dir, stem):
    return pq.read_table(version_dir / f"{stem}.parquet")


def decisions(*rows):
    return pa.table({k: [r[i] for r in rows] for i, k in enumerate(("anchor_id", "doc_id", "decision"))})


def apply(version_dir, table, **options):
    return apply_decisions(
        read(version_dir, "candidates"),
        table,
        anchors=read(version_dir, "anchors"),
        docs=read(version_dir, "docs"),
        pairs=read(version_dir, "pairs"),
        **{"extra_positives": False, **options},
    )


def rows_of(candidates, anchor_id, doc_id):
    mask = pc.and_(pc.equal(candidates["anchor_id"], anchor_id), pc.equal(candidates["doc_id"], doc_id))
    return candidates.filter(mask).to_pylist()


def chosen_negative(version_dir, slot=1):
    cands = read(version_dir, "candidates")
    row = cands.filter(pc.equal(cands["negative_slot"], slot)).to_pylist()[0]
    return row["anchor_id"], row["doc_id"], row["anchor_idx"], row["doc_idx"]


def a_positive(version_dir):
    pairs, anchors, docs = read(version_dir, "pairs"), read(version_dir, "anchors"), read(version_dir, "docs")
    first = pairs.to_pylist()[0]
    return anchors["anchor_id"][first["anchor_idx"]].as_py(), docs["doc_id"][first["doc_idx"]].as_py(), first


def test_confirmed_relevant_is_never_a_negative_and_optionally_a_positive(version_dir):
    anchor_id, doc_id, anchor_idx, doc_idx = chosen_negative(version_dir)
    plain = apply(version_dir, decisions((anchor_id, doc_id, "is_positive")))
    assert [r[EXCLUDED_COLUMN] for r in rows_of(plain.candidates, anchor_id, doc_id)] == [True]
    assert pc.sum(plain.candidates[EXCLUDED_COLUMN]).as_py() == 1
    assert plain.pairs.equals(read(version_dir, "pairs")) and plain.counts["extra_positives"] == 0
    extra = apply(version_dir, decisions((anchor_id, doc_id, "is_positive")), extra_positives=True)
    added = extra.pairs.slice(read(version_dir, "pairs").num_rows).to_pylist()
    assert [(r["anchor_idx"], r["doc_idx"]) for r in added] == [(anchor_idx, doc_idx)]
    assert added[0]["pair_idx"] == pc.max(read(version_dir, "pairs")["pair_idx"]).as_py() + 1
    assert extra.counts | {"decisions": 1, "is_positive": 1, "applied": 1, "extra_positives": 1} == extra.counts


def test_rejected_positive_and_dropped_pairs_leave_the_training_pairs(version_dir):
    anchor_id, doc_id, first = a_positive(version_dir)
    neg_anchor, neg_doc, _, _ = chosen_negative(version_dir, slot=2)
    result = apply(version_dir, decisions((anchor_id, doc_id, "is_negative"), (neg_anchor, neg_doc, "drop_pair")))
    assert result.dropped_pair_idx.tolist() == [first["pair_idx"]]
    assert first["pair_idx"] not in result.pairs["pair_idx"].to_pylist()
    assert [r[EXCLUDED_COLUMN] for r in rows_of(result.candidates, neg_anchor, neg_doc)] == [True]
    assert result.counts["dropped_pairs"] == 1 and result.counts["excluded_candidates"] == 1


def test_confirmed_negative_and_skip_change_nothing(version_dir):
    anchor_id, doc_id, _, _ = chosen_negative(version_dir)
    other_anchor, other_doc, _, _ = chosen_negative(version_dir, slot=2)
    result = apply(version_dir, decisions((anchor_id, doc_id, "is_negative"), (other_anchor, other_doc, "skip")))
    assert not pc.any(result.candidates[EXCLUDED_COLUMN]).as_py()
    assert result.pairs.num_rows == read(version_dir, "pairs").num_rows
    assert (result.counts["is_negative"], result.counts["skip"], result.counts["applied"]) == (1, 1, 1)


def test_unknown_ids_are_counted_not_fatal_and_last_row_wins(version_dir):
    anchor_id, doc_id, _, _ = chosen_negative(version_dir)
    table = decisions(("nope", doc_id, "drop_pair"), (anchor_id, doc_id, "drop_pair"), (anchor_id, doc_id, "skip"))
    result = apply(version_dir, table)
    assert result.counts["unmatched"] == 1 and result.counts["skip"] == 1
    assert not pc.any(result.candidates[EXCLUDED_COLUMN]).as_py()
    with pytest.raises(InputError, match="unknown decision"):
        apply(version_dir, decisions((anchor_id, doc_id, "maybe")))


def test_works_on_search_tables_without_ids_or_idx_columns(version_dir):
    """The select stage passes the raw search table and anchors/docs without *_idx columns."""
    anchor_id, doc_id, anchor_idx, doc_idx = chosen_negative(version_dir)
    raw = read(version_dir, "candidates").drop_columns(["anchor_id", "doc_id", "reason", "negative_slot"])
    result = apply_decisions(
        raw,
        decisions((anchor_id, doc_id, "drop_pair")),
        anchors=read(version_dir, "anchors").select(["anchor_id", "text"]),
        docs=read(version_dir, "docs").select(["doc_id", "text"]),
        pairs=read(version_dir, "pairs"),
        extra_positives=False,
    )
    hit = result.candidates.filter(result.candidates[EXCLUDED_COLUMN]).to_pylist()
    assert [(r["anchor_idx"], r["doc_idx"]) for r in hit] == [(anchor_idx, doc_idx)]


def test_selection_replaces_an_excluded_negative_with_the_next_candidate(version_dir):
    anchor_id, doc_id, anchor_idx, doc_idx = chosen_negative(version_dir)
    anchors, docs = read(version_dir, "anchors"), read(version_dir, "docs")
    base = read(version_dir, "candidates").drop_columns(["anchor_id", "doc_id", "reason", "negative_slot"])
    result = apply_decisions(
        base,
        decisions((anchor_id, doc_id, "is_positive")),
        anchors=anchors,
        docs=docs,
        pairs=read(version_dir, "pairs"),
        extra_positives=False,
    )
    options = {
        "anchor_hash": stable_hash64(anchors["anchor_id"].to_pylist()),
        "doc_hash": stable_hash64(docs["doc_id"].to_pylist()),
        **MineConfig(strategy="naive", num_negatives=3).model_dump(include=SELECT_OPTIONS),
    }
    before = select_negatives(base, **options).candidates
    after = select_negatives(result.candidates, **options).candidates

    def negatives(table):
        mine = table.filter(pc.and_(pc.equal(table["anchor_idx"], anchor_idx), pc.is_valid(table["negative_slot"])))
        return set(mine["doc_idx"].to_pylist())

    assert doc_idx in negatives(before) and doc_idx not in negatives(after)
    assert len(negatives(after)) == len(negatives(before))
    row = after.filter(pc.and_(pc.equal(after["anchor_idx"], anchor_idx), pc.equal(after["doc_idx"], doc_idx)))
    assert row["reason"].to_pylist() == ["audit_decision"]


def test_unflag_decided_removes_pairs_with_a_final_decision(version_dir):
    flagged = read(version_dir, "flagged")
    first, second = flagged.to_pylist()[:2]
    table = decisions(
        (first["anchor_id"], first["doc_id"], "is_negative"), (second["anchor_id"], second["doc_id"], "skip")
    )
    kept, removed = unflag_decided(flagged, table)
    assert removed == 1 and kept.num_rows == flagged.num_rows - 1
    keys = set(zip(kept["anchor_id"].to_pylist(), kept["doc_id"].to_pylist(), strict=True))
    assert (first["anchor_id"], first["doc_id"]) not in keys and (second["anchor_id"], second["doc_id"]) in keys


def test_load_decisions_reads_the_database_beside_the_datasets(tmp_path, datasets_root, version_dir):
    assert load_decisions(datasets_root, DATASET).num_rows == 0
    assert not (datasets_root / "audit.db").exists()  # reading never creates a database
    from negminer.audit.db import default_url, open_db

    engine = open_db(default_url(datasets_root))
    load_version(engine, version_dir)
    pair = list_pairs(engine, Filters(kind="false_negative"), limit=1)[0].pair
    record_decision(engine, pair.id, "is_positive", reviewer="ana")
    engine.dispose()
    table = load_decisions(datasets_root, DATASET)
    assert table.select(["anchor_id", "doc_id", "decision"]).to_pylist() == [
        {"anchor_id": pair.anchor_id, "doc_id": pair.doc_id, "decision": "is_positive"}
    ]
    assert load_decisions(datasets_root, "other-dataset").num_rows == 0


def test_decisions_on_one_version_apply_to_a_later_version(engine, datasets_root, version_dir):
    """Decisions are keyed by (dataset, anchor_id, doc_id): a later version with reshuffled
    indices gets the same exclusions."""
    from negminer.storage.versions import write_version

    load_version(engine, version_dir)
    pair = list_pairs(engine, Filters(kind="false_negative"), limit=1)[0].pair
    record_decision(engine, pair.id, "drop_pair", reviewer="ana")
    docs = read(version_dir, "docs")
    order = np.arange(docs.num_rows)[::-1]
    shuffled = docs.take(pa.array(order)).set_column(0, "doc_idx", pa.array(np.arange(docs.num_rows, dtype=np.int32)))
    remap = np.empty(docs.num_rows, np.int32)
    remap[order] = np.arange(docs.num_rows, dtype=np.int32)
    cands = read(version_dir, "candidates")
    cands = cands.set_column(
        cands.column_names.index("doc_idx"), "doc_idx", pa.array(remap[cands["doc_idx"].to_numpy()])
    )
    pairs = read(version_dir, "pairs")
    pairs = pairs.set_column(
        pairs.column_names.index("doc_idx"), "doc_idx", pa.array(remap[pairs["doc_idx"].to_numpy()])
    )
    later = write_version(
        datasets_root,
        DATASET,
        tables={"candidates": cands, "docs": shuffled, "pairs": pairs, "anchors": read(version_dir, "anchors")},
        manifest={},
    )
    from negminer.audit.queries import latest_decisions

    result = apply_decisions(
        read(later, "candidates"),
        latest_decisions(engine, DATASET),
        anchors=read(later, "anchors"),
        docs=read(later, "docs"),
        pairs=read(later, "pairs"),
        extra_positives=False,
    )
    hit = result.candidates.filter(result.candidates[EXCLUDED_COLUMN])
    assert list(zip(hit["anchor_id"].to_pylist(), hit["doc_id"].to_pylist(), strict=True)) == [
        (pair.anchor_id, pair.doc_id)
    ]


def test_confirmed_negative_clears_the_curation_flag(version_dir):
    """Curation quarantined the candidate as a likely false negative; the reviewer says it is a
    true negative, so selection may use it again."""
    anchor_id, doc_id, _, _ = chosen_negative(version_dir)
    other_anchor, other_doc, _, _ = chosen_negative(version_dir, slot=2)
    cands = read(version_dir, "candidates")
    flag = pc.or_(
        pc.and_(pc.equal(cands["anchor_id"], anchor_id), pc.equal(cands["doc_id"], doc_id)),
        pc.and_(pc.equal(cands["anchor_id"], other_anchor), pc.equal(cands["doc_id"], other_doc)),
    )
    result = apply_decisions(
        cands.append_column("flagged_false_negative", flag),
        decisions((anchor_id, doc_id, "is_negative")),
        anchors=read(version_dir, "anchors"),
        docs=read(version_dir, "docs"),
        pairs=read(version_dir, "pairs"),
        extra_positives=False,
    )
    still = result.candidates.filter(result.candidates["flagged_false_negative"])
    assert list(zip(still["anchor_id"].to_pylist(), still["doc_id"].to_pylist(), strict=True)) == [
        (other_anchor, other_doc)
    ]
    assert result.counts["unflagged_candidates"] == 1


def test_no_decisions_leave_the_tables_untouched(version_dir):
    from negminer.audit.queries import DECISIONS_SCHEMA

    result = apply(version_dir, DECISIONS_SCHEMA.empty_table())
    assert result.candidates.equals(read(version_dir, "candidates"))
    assert result.pairs.equals(read(version_dir, "pairs"))
    assert set(result.counts.values()) == {0} and "applied" in result.counts


def test_counts_have_the_same_keys_with_and_without_decisions(version_dir):
    from negminer.audit.queries import DECISIONS_SCHEMA

    anchor_id, doc_id, _, _ = chosen_negative(version_dir)
    some = apply(version_dir, decisions((anchor_id, doc_id, "skip")))
    none = apply(version_dir, DECISIONS_SCHEMA.empty_table())
    assert set(some.counts) == set(none.counts)


def test_decisions_loaded_for_a_version_or_work_folder_apply_to_its_tables(datasets_root, version_dir, tmp_path):
    """What ``refilter`` (parent ``ROOT/NAME/vNNNN``) and the select stage (``ROOT/NAME/.work/KEY``)
    do: the dataset's decisions from the database beside ROOT, applied to the tables; a root
    without a database, or a dataset without decisions, leaves the tables untouched."""
    from negminer.audit.db import default_url, open_db

    engine = open_db(default_url(datasets_root))
    load_version(engine, version_dir)
    pair = list_pairs(engine, Filters(kind="false_negative"), limit=1)[0].pair
    record_decision(engine, pair.id, "drop_pair", reviewer="ana")
    engine.dispose()
    tables = {stem: read(version_dir, stem) for stem in ("candidates", "anchors", "docs", "pairs")}

    def feedback(root, name):
        return apply_decisions(
            tables["candidates"],
            load_decisions(root, name),
            anchors=tables["anchors"],
            docs=tables["docs"],
            pairs=tables["pairs"],
            extra_positives=False,
        )

    dataset_dir = version_dir.resolve().parent
    work_dir = datasets_root / DATASET / ".work" / "0123abcd"  # the select stage's ROOT/NAME/.work/KEY
    for root, name in ((dataset_dir.parent, dataset_dir.name), (work_dir.parents[2], work_dir.parents[1].name)):
        result = feedback(root, name)
        assert result.counts["applied"] == 1 and result.counts["excluded_candidates"] == 1
    for root, name in ((tmp_path / "elsewhere", DATASET), (datasets_root, "other-dataset")):
        untouched = feedback(root, name)
        assert untouched.candidates is tables["candidates"] and untouched.counts["decisions"] == 0


def test_a_confirmed_positive_that_curation_held_out_goes_back_into_training(version_dir):
    anchor_id, doc_id, first = a_positive(version_dir)
    pairs = read(version_dir, "pairs")
    is_held = pc.equal(pairs["pair_idx"], first["pair_idx"])
    held, training = pairs.filter(is_held), pairs.filter(pc.invert(is_held))

    def decide(decision):
        return apply_decisions(
            read(version_dir, "candidates"),
            decisions((anchor_id, doc_id, decision)),
            anchors=read(version_dir, "anchors"),
            docs=read(version_dir, "docs"),
            pairs=training,
            extra_positives=False,
            held_out=held,
        )

    restored = decide("is_positive")
    assert restored.pairs.slice(training.num_rows).to_pylist() == held.to_pylist()
    assert restored.pairs.num_rows == pairs.num_rows and restored.counts["restored_pairs"] == 1
    for decision in ("is_negative", "drop_pair", "skip"):
        other = decide(decision)
        assert other.pairs.equals(training) and other.counts["restored_pairs"] == 0, decision
