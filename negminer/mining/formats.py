"""Build the training view (``triplets.parquet``) from pairs and chosen negatives.

``triplet``: one row per (pair, negative) with string columns ``anchor``, ``positive``,
``negative``. ``n-tuple``: one row per pair with ``negative_1..negative_n``; pairs whose
anchor got fewer than ``num_negatives`` negatives are left out (counted by the caller).
Rows follow the input pair order, negatives their slot order, so output bytes are stable.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.config import OutputFormat


def negatives_by_anchor(selected: pa.Table, n_anchors: int, num_negatives: int) -> np.ndarray:
    """(n_anchors, num_negatives) doc_idx matrix of chosen negatives, -1 where missing."""
    grid = np.full((n_anchors, num_negatives), -1, np.int64)
    anchor = selected.column("anchor_idx").to_numpy()
    slot = selected.column("negative_slot").to_numpy().astype(np.int64)
    grid[anchor, slot - 1] = selected.column("doc_idx").to_numpy()
    return grid


def training_view(
    pairs: pa.Table,
    anchor_texts: pa.Array,
    doc_texts: pa.Array,
    negatives: np.ndarray,
    *,
    output_format: OutputFormat = "triplet",
) -> pa.Table:
    """The text-only training table.

    Args:
        pairs: table with ``anchor_idx`` and ``doc_idx`` (the positive), in output order.
        anchor_texts: anchor text by anchor_idx.
        doc_texts: doc text by doc_idx.
        negatives: (n_anchors, num_negatives) doc_idx of chosen negatives, -1 where missing.
        output_format: ``triplet`` or ``n-tuple``.

    Example:
        >>> training_view(pairs, anchors["text"], docs["text"], grid)  # doctest: +SKIP
    """
    pair_anchor = pairs.column("anchor_idx").to_numpy()
    pair_doc = pairs.column("doc_idx").to_numpy()
    per_pair = negatives[pair_anchor]
    if output_format == "triplet":
        row, slot = np.nonzero(per_pair >= 0)
        return pa.table(
            {
                "anchor": anchor_texts.take(pair_anchor[row]),
                "positive": doc_texts.take(pair_doc[row]),
                "negative": doc_texts.take(per_pair[row, slot]),
            }
        )
    full = np.all(per_pair >= 0, axis=1)
    columns = {
        "anchor": anchor_texts.take(pair_anchor[full]),
        "positive": doc_texts.take(pair_doc[full]),
    }
    for k in range(per_pair.shape[1]):
        columns[f"negative_{k + 1}"] = doc_texts.take(per_pair[full, k])
    return pa.table({name: pc.cast(values, pa.string()) for name, values in columns.items()})
