"""A mined version's diagnostics (manifest key ``diagnostics``), from the files the run stored.

* ``alignment``: the mining model's alignment (:mod:`negminer.evaluation.geometry`) over every
  given (anchor, positive) pair, from the run's ``anchors.npy`` / ``docs.npy``.
* ``uniformity``: its uniformity over a seeded sample of the anchor and document vectors
  together (``diagnostics.sample`` vectors, chosen by a hash of their ids).
* ``histograms``: squared distances ||f(x) − f(y)||² in ``diagnostics.histogram_bins`` bins
  over [0, 4] of the given pairs (``positive``), the chosen negatives (``negative``, from their
  cosine: 2 − 2·score) and the sample's pairs (``random``): the paper's picture of alignment
  (positives near 0) and uniformity (random pairs near 2).
* ``unlabelled_positives``: the candidates that are not given positives (nor the same text as
  one or as the anchor), and how many of them curation judged relevant (flagged
  ``false_negative`` or ``near_duplicate``, whatever the action): the estimated share of
  unlabelled positives among retrieved candidates, overall and per ``source`` when
  candidates.parquet has that column. None when curation is off or judged nothing.

Nothing is re-embedded and nothing grows with the number of pairs, documents or candidates
beyond one batch (``diagnostics.batch_rows``) and the sample.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.config import DiagnosticsConfig
from negminer.evaluation.geometry import (
    alignment_of_batches,
    pair_distances,
    seeded_sample_of_batches,
    squared_distance_edges,
    uniformity_with_histogram,
)
from negminer.mining.vectors import take_rows

if TYPE_CHECKING:
    from negminer.evaluation.data import RetrievalSet

JUDGED_RELEVANT_KINDS = ("false_negative", "near_duplicate")
_UNLABELLED_EXCLUDES = ("is_positive", "same_text_as_positive", "same_text_as_anchor")
DIGITS = 6


def version_diagnostics(
    work_dir: str | Path, *, candidates: str | Path, flagged: str | Path | None, config: DiagnosticsConfig
) -> dict[str, Any]:
    """The manifest's ``diagnostics`` of a run whose work folder is `work_dir`.

    Args:
        work_dir: holds ``pairs.parquet``, ``anchors.parquet``, ``docs.parquet`` and the
            vectors ``anchors.npy`` / ``docs.npy`` (row i is the text of ``*_idx`` i).
        candidates: the version's candidates.parquet (``reason`` and ``score`` columns).
        flagged: its flagged.parquet, or None when curation did not run (or judged nothing).
        config: sample size, alpha, t, block and batch sizes, histogram bins, seed.

    Example:
        >>> version_diagnostics("runs/sample/.work/KEY", candidates="selected.parquet",
        ...                     flagged="flagged.parquet", config=DiagnosticsConfig())  # doctest: +SKIP
        {'alignment': 0.612..., 'uniformity': -2.41..., ...}
    """
    work_dir = Path(work_dir)
    edges = squared_distance_edges(config.histogram_bins)
    anchors = np.load(work_dir / "anchors.npy", mmap_mode="r")
    docs = np.load(work_dir / "docs.npy", mmap_mode="r")
    positive = np.zeros(config.histogram_bins, np.int64)
    counted = 0

    def pair_batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal counted
        for batch in pq.ParquetFile(work_dir / "pairs.parquet").iter_batches(
            batch_size=config.batch_rows, columns=["anchor_idx", "doc_idx"]
        ):
            x = take_rows(anchors, batch.column("anchor_idx").to_numpy())
            y = take_rows(docs, batch.column("doc_idx").to_numpy())
            positive[:] += np.histogram(pair_distances(x, y, alpha=2.0), bins=edges)[0]
            counted += len(x)
            yield x, y

    alignment = alignment_of_batches(pair_batches(), alpha=config.alpha)
    sample = _sample_vectors(work_dir, anchors, docs, config=config)
    uniform = uniformity_with_histogram(sample, t=config.t, block_rows=config.block_rows, edges=edges)
    return {
        "alignment": _rounded(alignment),
        "alignment_pairs": counted,
        "uniformity": _rounded(uniform.value),
        "uniformity_vectors": len(sample),
        "uniformity_pairs": uniform.pairs,
        "histograms": {
            "squared_distance_edges": [round(float(e), DIGITS) for e in edges],
            "positive": positive.tolist(),
            "negative": negative_histogram(candidates, edges=edges, batch_rows=config.batch_rows).tolist(),
            "random": uniform.histogram.tolist(),
        },
        "unlabelled_positives": None
        if flagged is None
        else unlabelled_positive_share(candidates, flagged, batch_rows=config.batch_rows),
    }


def reselected_diagnostics(
    diagnostics: dict[str, Any], *, candidates: str | Path, flagged: str | Path | None, config: DiagnosticsConfig
) -> dict[str, Any]:
    """A parent's diagnostics for a version that chose new negatives from the same candidates
    (``refilter``): the same vectors and pairs, so alignment, uniformity and their histograms
    stay; the chosen negatives' histogram and the unlabelled-positive share are recounted."""
    out = {**diagnostics, "histograms": dict(diagnostics.get("histograms") or {})}
    edges = np.asarray(out["histograms"].get("squared_distance_edges") or squared_distance_edges(config.histogram_bins))
    out["histograms"]["negative"] = negative_histogram(candidates, edges=edges, batch_rows=config.batch_rows).tolist()
    if diagnostics.get("unlabelled_positives") is not None and flagged is not None:
        out["unlabelled_positives"] = unlabelled_positive_share(candidates, flagged, batch_rows=config.batch_rows)
    return out


def _sample_vectors(work_dir: Path, anchors: np.ndarray, docs: np.ndarray, *, config: DiagnosticsConfig) -> np.ndarray:
    """The seeded sample of anchor and doc vectors together, in hash order (float32)."""
    sides = (("anchor", work_dir / "anchors.parquet", anchors), ("doc", work_dir / "docs.parquet", docs))

    def id_batches() -> Iterator[list[str]]:
        for side, path, _ in sides:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=config.batch_rows, columns=[f"{side}_id"]):
                yield [f"{side}\x1f{i}" for i in batch.column(0).to_pylist()]

    positions = seeded_sample_of_batches(id_batches(), size=config.sample, seed=config.seed)
    n_anchors = len(anchors)
    out = np.empty((len(positions), anchors.shape[1]), np.float32)
    is_anchor = positions < n_anchors
    out[is_anchor] = take_rows(anchors, positions[is_anchor])
    out[~is_anchor] = take_rows(docs, positions[~is_anchor] - n_anchors)
    return out


def negative_histogram(candidates: str | Path, *, edges: np.ndarray, batch_rows: int) -> np.ndarray:
    """Squared distances (2 − 2·cosine) of the chosen negatives (``reason == "selected"``) in `edges`' bins."""
    counts = np.zeros(len(edges) - 1, np.int64)
    for batch in pq.ParquetFile(candidates).iter_batches(batch_size=batch_rows, columns=["reason", "score"]):
        chosen = pc.equal(batch.column("reason"), "selected").to_numpy(zero_copy_only=False)
        scores = batch.column("score").to_numpy(zero_copy_only=False).astype(np.float64)[chosen]
        counts += np.histogram(np.clip(2.0 - 2.0 * scores, edges[0], edges[-1]), bins=edges)[0]
    return counts


def unlabelled_positive_share(candidates: str | Path, flagged: str | Path, *, batch_rows: int) -> dict[str, Any]:
    """How many unlabelled candidates curation judged relevant, overall and per ``source``.

    Args:
        candidates: candidates.parquet (``anchor_idx``, ``doc_idx``, the positive-text flags,
            optional ``source``).
        flagged: flagged.parquet; its ``false_negative`` and ``near_duplicate`` rows are the
            candidates judged relevant.
        batch_rows: candidate rows read per batch.

    Returns:
        ``{"candidates": N, "judged_relevant": K, "rate": K / N, "by_source": {...}}`` (``by_source``
        only when candidates.parquet has a ``source`` column, the same three figures per value).
    """
    judged_keys = _judged_keys(flagged)
    names = pq.read_schema(candidates).names
    has_source = "source" in names
    columns = ["anchor_idx", "doc_idx", *[c for c in _UNLABELLED_EXCLUDES if c in names]]
    totals, judged = Counter(), Counter()
    for batch in pq.ParquetFile(candidates).iter_batches(
        batch_size=batch_rows, columns=columns + (["source"] if has_source else [])
    ):
        unlabelled = _unlabelled(batch)
        keys = _keys(batch.column("anchor_idx"), batch.column("doc_idx"))[unlabelled]
        hit = np.isin(keys, judged_keys)
        totals["all"] += int(unlabelled.sum())
        judged["all"] += int(hit.sum())
        if has_source:
            sources = np.asarray([_source_label(s) for s in batch.column("source").to_pylist()], dtype=object)
            sources = sources[unlabelled]
            totals.update(sources.tolist())
            judged.update(sources[hit].tolist())
    out = _share(totals.pop("all", 0), judged.pop("all", 0))
    if has_source:
        out["by_source"] = {s: _share(totals[s], judged[s]) for s in sorted(totals)}
    return out


def _judged_keys(flagged: str | Path) -> np.ndarray:
    """Sorted (anchor_idx, doc_idx) keys of the flagged rows of :data:`JUDGED_RELEVANT_KINDS`."""
    table = pq.read_table(flagged, columns=["kind", "anchor_idx", "doc_idx"])
    mask = pc.is_in(table.column("kind"), pa.array(JUDGED_RELEVANT_KINDS))
    table = table.filter(mask)
    return np.unique(_keys(table.column("anchor_idx"), table.column("doc_idx")))


def _keys(anchor_idx: pa.ChunkedArray | pa.Array, doc_idx: pa.ChunkedArray | pa.Array) -> np.ndarray:
    anchors = np.asarray(anchor_idx.to_numpy(zero_copy_only=False), np.int64)
    docs = np.asarray(doc_idx.to_numpy(zero_copy_only=False), np.int64)
    return (anchors << 32) | docs


def _unlabelled(batch: pa.RecordBatch) -> np.ndarray:
    """Rows that are no given positive, nor the text of one, nor the anchor's own text."""
    keep = np.ones(batch.num_rows, bool)
    for column in _UNLABELLED_EXCLUDES:
        if column in batch.schema.names:
            keep &= ~pc.fill_null(batch.column(column), False).to_numpy(zero_copy_only=False)
    return keep


def _source_label(value: Any) -> str:
    """A ``source`` cell as one label (a list of views joins with ``+``)."""
    if isinstance(value, list | tuple):
        return "+".join(str(v) for v in value)
    return str(value)


def _share(candidates: int, judged: int) -> dict[str, Any]:
    return {
        "candidates": candidates,
        "judged_relevant": judged,
        "rate": round(judged / candidates, DIGITS) if candidates else None,
    }


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, DIGITS)


# ---------------------------------------------------------------- a model on a retrieval set


def model_geometry(
    model: Any, data: RetrievalSet, *, config: DiagnosticsConfig, batch_size: int
) -> dict[str, float | None]:
    """Alignment and uniformity of `model` on a labelled retrieval set (``negminer evaluate``).

    Alignment averages over (query, relevant document) pairs, at most ``config.sample`` of them
    chosen by a seeded hash of their ids; uniformity over a seeded sample of ``config.sample``
    queries and documents together. The samples depend on the set and the seed only, so the
    base model and every fine-tuned copy are measured on the same texts.

    Args:
        model: a SentenceTransformer (``encode``).
        data: the evaluation set.
        config: sample size, alpha, t, block rows, seed.
        batch_size: texts per encoding batch.

    Returns:
        ``{"alignment": float, "uniformity": float}`` rounded to 6 decimals.
    """
    from negminer.evaluation.geometry import alignment, uniformity

    pairs, sample_keys = _geometry_sample(data, config=config)
    wanted = sorted({*(q for q, _ in pairs), *(d for _, d in pairs), *sample_keys})
    vectors = dict(zip(wanted, _encode(model, [_text(data, key) for key in wanted], batch_size), strict=True))
    x = np.stack([vectors[q] for q, _ in pairs]) if pairs else np.zeros((0, 1))
    y = np.stack([vectors[d] for _, d in pairs]) if pairs else np.zeros((0, 1))
    sample = np.stack([vectors[key] for key in sample_keys]) if sample_keys else np.zeros((0, 1))
    return {
        "alignment": _rounded(alignment(x, y, alpha=config.alpha, batch_rows=config.batch_rows)),
        "uniformity": _rounded(uniformity(sample, t=config.t, block_rows=config.block_rows)),
    }


Key = tuple[str, str]  # ("query" | "doc", id)


def _geometry_sample(data: RetrievalSet, *, config: DiagnosticsConfig) -> tuple[list[tuple[Key, Key]], list[Key]]:
    """The sampled (query, relevant doc) pairs and the uniformity sample, as keys."""
    from negminer.evaluation.geometry import seeded_sample

    pairs = [(qid, did) for qid in data.queries for did in sorted(data.relevant.get(qid, ())) if did in data.corpus]
    picked = seeded_sample([f"{q}\x1f{d}" for q, d in pairs], size=config.sample, seed=config.seed)
    keys = [("query", q) for q in data.queries] + [("doc", d) for d in data.corpus]
    sample = seeded_sample([f"{side}\x1f{i}" for side, i in keys], size=config.sample, seed=config.seed)
    return [(("query", pairs[i][0]), ("doc", pairs[i][1])) for i in picked], [keys[i] for i in sample]


def _text(data: RetrievalSet, key: Key) -> str:
    side, ident = key
    return data.queries[ident] if side == "query" else data.corpus[ident]


def _encode(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    if not texts:
        return np.zeros((0, 1), np.float32)
    return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
