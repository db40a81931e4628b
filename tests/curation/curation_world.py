"""A small synthetic retrieval world with planted errors whose answers are known.

Topics are random directions; every topic has documents and anchors scattered around it, and
a document is relevant to an anchor of its topic. Each anchor is given ONE relevant document
as its positive, so its other topic documents are unlabelled positives among its candidates.
Planted errors:

* ``PARAPHRASE``: a new document that is a near-copy of anchor 0's positive (cosine ≈ 0.99);
  it must be flagged ``near_duplicate`` (its own kind, not also ``false_negative``) for anchor 0;
* ``WRONG_PAIR``: anchor 1's positive is replaced by a document of a far-away topic; the
  pair must be flagged ``false_positive``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negminer.mining.search import search_candidates
from negminer.textkeys import text_key

TOPICS, DOCS_PER_TOPIC, ANCHORS_PER_TOPIC, DIM = 30, 10, 4, 48
WRONG_PAIR = 1  # pair_idx (= anchor_idx) whose positive is a random far document
CORROBORATING = 2  # an anchor of WRONG_PAIR's topic (see build_world's corroborated_wrong_pair)


@dataclass(frozen=True)
class World:
    candidates: pa.Table
    pairs: pa.Table
    anchor_vectors: np.ndarray
    doc_vectors: np.ndarray
    anchor_texts: list[str]
    doc_texts: list[str]
    paraphrase: int  # doc_idx of the planted paraphrase of anchor 0's positive

    def kwargs(self) -> dict:
        return {
            "pairs": self.pairs,
            "anchor_vectors": self.anchor_vectors,
            "doc_vectors": self.doc_vectors,
            "anchor_texts": self.anchor_texts,
            "doc_texts": self.doc_texts,
        }


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def build_world(tmp: Path, seed: int = 0, *, corroborated_wrong_pair: bool = False) -> World:
    """The world; with `corroborated_wrong_pair`, anchor ``CORROBORATING`` (of WRONG_PAIR's topic) is
    given WRONG_PAIR's far document as its positive too."""
    rng = np.random.default_rng(seed)
    centers = _unit(rng.normal(size=(TOPICS, DIM)))
    n_docs = TOPICS * DOCS_PER_TOPIC
    doc_topic = np.repeat(np.arange(TOPICS), DOCS_PER_TOPIC)
    docs = _unit(centers[doc_topic] + 0.12 * rng.normal(size=(n_docs, DIM)))
    anchor_topic = np.repeat(np.arange(TOPICS), ANCHORS_PER_TOPIC)
    anchors = _unit(centers[anchor_topic] + 0.12 * rng.normal(size=(len(anchor_topic), DIM)))
    words = [f"term{t}a term{t}b term{t}c" for t in range(TOPICS)]
    doc_texts = [f"document {i} about {words[t]} with filler{i % 7}" for i, t in enumerate(doc_topic)]
    anchor_texts = [f"question {i} on {words[t]}" for i, t in enumerate(anchor_topic)]
    positive = anchor_topic * DOCS_PER_TOPIC + rng.integers(0, DOCS_PER_TOPIC, len(anchor_topic))
    far_topic = int(np.argmin(centers @ centers[anchor_topic[WRONG_PAIR]]))
    positive[WRONG_PAIR] = far_topic * DOCS_PER_TOPIC
    if corroborated_wrong_pair:
        positive[CORROBORATING] = positive[WRONG_PAIR]
    paraphrase = n_docs
    docs = np.vstack([docs, _unit(docs[positive[0]] + 0.02 * rng.normal(size=DIM))])
    doc_texts.append(doc_texts[positive[0]].replace("document", "text", 1) + " (reworded)")
    pairs = pa.table(
        {
            "pair_idx": pa.array(np.arange(len(positive)), pa.int32()),
            "anchor_idx": pa.array(np.arange(len(positive)), pa.int32()),
            "doc_idx": pa.array(positive, pa.int32()),
        }
    )
    result = search_candidates(
        anchors,
        docs,
        tmp / "candidates.parquet",
        pair_anchor=np.arange(len(positive)),
        pair_doc=positive,
        doc_text_keys=[text_key(t) for t in doc_texts],
        anchor_text_keys=[text_key(t) for t in anchor_texts],
        search_depth=40,
        batch_size=4096,
    )
    return World(pq.read_table(result.path), pairs, anchors, docs, anchor_texts, doc_texts, paraphrase)
