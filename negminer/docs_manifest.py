"""What the keys of ``manifest.json`` and the reason codes mean, for the generated reference.

:mod:`negminer.docs_reference` renders these into ``docs/reference/``; it refuses to render
when the code has a reason code, flag kind or action that has no entry here, and
``tests/test_docs_examples.py`` checks that every key of a freshly mined manifest (top level
and ``counts``) is listed in :data:`MANIFEST_FIELDS`.
"""

from __future__ import annotations

import ast
from pathlib import Path

MANIFEST_FIELDS: dict[str, str] = {
    "schema_version": "Version of this layout (an integer); keys are only ever added.",
    "negminer_version": "The negminer release that wrote the version.",
    "name": "Dataset name (the folder under the datasets root).",
    "version": "This version's folder name, `v0001`, `v0002`, ...",
    "parent": "The version this one follows (the dataset's LATEST when it was written, or the version "
    "refilter started from; a path when that lives in another dataset); null for the first.",
    "created_at": "UTC time the manifest was written (ISO 8601, seconds).",
    "config": "The full validated configuration (every section of the configuration reference, defaults "
    "filled in): rerunning with it gives the same bytes.",
    "model": "The embedding model: `name`, `path`, `fingerprint` (a hash of the model's files: the key of "
    "its stored embeddings) and the `prompts` applied to queries and documents.",
    "inputs": "Per input (`pairs`, `corpus`): `path`, `bytes` and `sha256` of the file (or folder) read.",
    "files": "Per file of the version: `rows`, `bytes`, `sha256` (what `negminer verify` checks).",
    "counts": "What went in and came out; the `counts.*` keys below.",
    "counts.pairs_in": "Pair rows read, rejected ones included.",
    "counts.corpus_in": "Corpus rows read, rejected ones included (absent without a corpus).",
    "counts.rejected_rows": "Input rows set aside in `rejects.parquet`.",
    "counts.duplicate_pairs": "Pair rows that repeat an earlier (anchor, positive) and were merged (absent when none).",
    "counts.corpus_duplicate_rows": "Corpus rows that repeat an earlier id with the same text (absent when none).",
    "counts.pairs": "Distinct valid (anchor, positive) pairs.",
    "counts.anchors": "Distinct anchors.",
    "counts.docs": "Documents in the candidate pool: the corpus plus every positive.",
    "counts.candidates": "Candidate rows retrieved (`candidates.parquet`).",
    "counts.negatives": "Negatives chosen.",
    "counts.negatives_by_difficulty": "Chosen negatives per difficulty tier (`easy`, `medium`, `hard`; see "
    "`selection.difficulty_thresholds`).",
    "counts.anchors_short": "Anchors that got fewer than `mine.num_negatives` negatives.",
    "counts.triplet_rows": "Rows of the training view `triplets.parquet`.",
    "counts.dropped_by_reason": "Candidates per outcome (see the reason codes); `selected` are the chosen ones.",
    "counts.flagged_by_kind": "Rows of `flagged.parquet` per kind.",
    "counts.curation": "What curation did: `rows_scored`, `pairs_scored`, flags per kind, "
    "`negatives_excluded`, `pairs_excluded` (given positives left out of training), `skipped` "
    "(1 when it judged nothing).",
    "counts.audit": "Reviewers' decisions applied: per decision, `decisions`, `applied`, `unmatched`, "
    "`excluded_candidates`, `unflagged_candidates`, `dropped_pairs`, `restored_pairs`, `extra_positives`.",
    "counts.embedding": "Per side (`anchors`, `docs`): `rows`, `embedded` (new), `reused` (from the "
    "embedding store) and `truncated` (texts longer than the model's max_seq_length).",
    "score_quantiles": "Cosine quantiles (q01 ... q99) of the `candidate`, `negative` and `positive_retrieved` scores.",
    "noise": "Curation's estimate of the label noise: `negatives_relevant` and `candidate_side` (cleanlab's "
    "confident joint over the candidates), `positives_irrelevant` (the estimated share of given positives "
    "that score like random documents of the corpus) and `false_positive_null` (null samples per anchor, "
    "that share, the scale applied to the confidences); empty without curation.",
    "policies": "The curation actions applied (null without curation): `false_negative_action`, "
    "`false_positive_action`, `false_positive_uncertain_action` and `near_duplicate_action` as in "
    "`curate`, with `auto` replaced by the action it resolved to from `noise.negatives_relevant`; a "
    "`refilter` with new policies records its own.",
    "selection": "Score bounds the strategy derived from this run (`min_score_from_percentile`, "
    "`max_score_from_percentile`; null when not used) and `difficulty_thresholds`: the margins "
    "(score − positive score) from which a candidate is `medium` and `hard`, the run's "
    "`mine.difficulty_medium_quantile` and `mine.difficulty_hard_quantile` quantiles of every retrieved "
    "non-positive candidate's margin (null without candidates); with `mine.strategy: auto`, "
    "`auto_strategy`: the preset it chose (`chosen`), why, and the `negatives_relevant` estimate and "
    "`auto_naive_below` threshold it compared.",
    "search_depth": "Candidates retrieved per anchor (`mine.search_depth` plus room for the anchor's own positives).",
    "index": "The FAISS index searched: `factory`, `params`, `rows`, measured `recall` on `recall_sample` "
    "anchors (null for an exact index), `k`, `gpu`, `key`, and `extended_from` when a parent's index was "
    "extended.",
    "sources": "Only when `mine.sources` is not `[dense]`: the candidate `sources` in fusion order, `fusion` "
    "(`rrf` or `score`), `rrf_k`, `rows_by_source` (candidate rows per value of the `source` column: `dense`, "
    "`bm25`, `dense+bm25`, ...), `bm25`: the BM25 index's `key`, `rows`, `scoring` (tokens, k1, b, tf and idf "
    "variants) and its `shards` (`first`, `stop`, `postings`), and with the dense2 source `dense2`: the second "
    "`model` (as `model`, without its path), its `index` (as `index`) and its `embedding_store` (as "
    "`embedding_store`: the shards of the second model's vectors, which `negminer gc` keeps or frees).",
    "work": "The run's work folder key (`ROOT/NAME/.work/KEY`), which a rerun reuses.",
    "embedding_store": "The embedding store used: `path` (relative to the datasets root when inside it), "
    "its `folder` for this model and the `shards` this version's vectors came from (what `negminer gc` "
    "keeps); null with precomputed vectors.",
    "changes": "Against `parent`: rows `added`, `removed`, `kept` of `triplets`, `pairs` and `docs`, "
    "`score_quantiles_drift`, and `negatives`: the chosen negatives `added`, `removed`, `kept` by (anchor id, "
    "doc id), with `by_difficulty` (added and removed per tier, kept per parent tier and new tier); null for "
    "a first version.",
    "diagnostics": "The mining model's embedding space on this dataset, from the vectors the run stored "
    "(null with `diagnostics.enabled: false`; a refilter version keeps its parent's). The `diagnostics.*` keys "
    "below; the figures are rounded to 6 decimals.",
    "diagnostics.alignment": "Wang & Isola's alignment: mean ||f(anchor) − f(positive)||^alpha (alpha = "
    "`diagnostics.alpha`, 2) over the `alignment_pairs` given pairs, on L2-normalised vectors. Lower: "
    "positives closer.",
    "diagnostics.uniformity": "Wang & Isola's uniformity: log mean exp(−t·||f(x) − f(y)||²) (t = "
    "`diagnostics.t`, 2) over the `uniformity_pairs` distinct pairs of a seeded sample of "
    "`uniformity_vectors` anchor and document vectors. More negative: more spread over the sphere.",
    "diagnostics.histograms": "Counts of squared distances ||f(x) − f(y)||² in the bins "
    "`squared_distance_edges` (over [0, 4]): `positive` (the given pairs), `negative` (the chosen negatives) "
    "and `random` (the uniformity sample's pairs).",
    "diagnostics.unlabelled_positives": "Retrieved candidates that are no given positive (`candidates`), "
    "those curation judged relevant (`judged_relevant`: flagged `false_negative` or `near_duplicate`, "
    "whatever the action) and their share (`rate`): the estimated unlabelled-positive rate; `by_source` "
    "gives the same per value of candidates.parquet's `source` column when it has one. Null when curation "
    "is off or judged nothing.",
    "derived_from": "Only on a `refilter` version: the parent's `path`, `version` and `manifest_sha256`, "
    "`by: refilter` and the `seconds` it took.",
}

CANDIDATE_REASONS: dict[str, str] = {
    "positive": "A known positive of the anchor (by id): never a negative.",
    "same_text_as_positive": "The same normalised text as one of the anchor's positives.",
    "same_text_as_anchor": "The same normalised text as the anchor itself.",
    "false_negative": "Flagged by curation as likely relevant (with `curate.false_negative_action` drop, "
    "quarantine or relabel); the next valid candidate takes its place.",
    "audit_decision": "A reviewer decided it is relevant to the anchor (`is_positive`) or dropped the pair.",
    "duplicate_text": "The same normalised text as a better-ranked candidate of the anchor.",
    "below_range_min": "Raw rank below `mine.range_min` (ranks count positives too).",
    "above_range_max": "Raw rank at or above `mine.range_max`.",
    "above_max_score": "Cosine above `mine.max_score`.",
    "below_min_score": "Cosine below `mine.min_score`.",
    "above_max_score_percentile": "Cosine above `mine.max_score_percentile` of this run's positive scores.",
    "below_min_score_percentile": "Cosine below `mine.min_score_percentile` of this run's positive scores.",
    "absolute_margin": "Within `mine.absolute_margin` of the anchor's lowest positive score.",
    "relative_margin": "Above the positive score × (1 − `mine.relative_margin`).",
    "semi_hard_band": "Outside the semi-hard band [positive − `mine.semi_hard_margin`, positive).",
    "surplus": "Eligible, but not sampled: the anchor had its `num_negatives` already.",
    "selected": "A chosen negative (its slot in `negative_slot`).",
}

REJECT_REASONS: dict[str, str] = {
    "null_value": "A text column is null (or a JSONL key is missing).",
    "empty_text": "A text is empty or whitespace only.",
    "non_string": "A JSONL value in a wanted column is not a string (number, boolean, list, object).",
    "invalid_unicode": "A JSON escape for a lone surrogate in a wanted column.",
    "invalid_utf8": "Bytes that are not valid UTF-8 (JSONL line, CSV record or Parquet value).",
    "invalid_json": "A JSONL line that is not JSON.",
    "not_an_object": "A JSONL line whose value is not an object.",
    "wrong_field_count": "A CSV/TSV record with more or fewer fields than the header.",
    "unparseable_csv": "A CSV record the csv module cannot parse (or an unclosed quoted field at the end).",
    "conflicting_id": "An id seen before with a different text (corpus id, anchor id or positive id).",
    "anchor_equals_positive": "The anchor is identical to its positive (up to case, Unicode form, whitespace).",
}

FLAG_KINDS: dict[str, str] = {
    "false_negative": "A mined candidate that looks relevant to the anchor (an unlabelled positive).",
    "false_positive": "A given positive that looks unrelated to its anchor (a likely wrong label).",
    "near_duplicate": "A candidate that is a near-copy or paraphrase of the anchor's positive.",
}

FLAG_ACTIONS: dict[str, str] = {
    "drop": "Out of the training view (a candidate: the next valid one replaces it).",
    "quarantine": "Out of the training view until a reviewer decides (`negminer audit`).",
    "keep": "Stays in; the flag is only recorded.",
    "relabel": "False negatives only: out of the negatives and in as an extra positive pair of its anchor "
    "(extra rows in every output format) until a reviewer says `is_negative`.",
}


def reject_codes_in_source(folder: Path | None = None) -> set[str]:
    """The reject reason codes the readers use: the ``reason`` literal of every
    ``reject_record(path, row, column, reason, value)`` call, and the literals paired with a
    mask in ``for mask, reason in (...)`` loops, in ``negminer/storage``.

    Example:
        >>> "conflicting_id" in reject_codes_in_source()
        True
    """
    folder = folder or Path(__file__).resolve().parent / "storage"
    codes: set[str] = set()
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "reject_record":
                reason = node.args[3] if len(node.args) > 3 else None
                if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
                    codes.add(reason.value)
            elif isinstance(node, ast.For) and "reason" in ast.unparse(node.target):
                for element in ast.walk(node.iter):
                    if isinstance(element, ast.Constant) and isinstance(element.value, str):
                        codes.add(element.value)
    return codes
