"""Curation policies applied again to a stored version's flags (``refilter`` with a ``curate`` section).

Contract: a version keeps every pair curation flagged (``flagged.parquet``: ``kind``,
``action``, ``anchor_idx``, ``doc_idx``, ``pair_idx``) and its training pairs
(``pairs.parquet``, without the given positives a false-positive policy held out). Given new
``*_action`` settings (and ``false_positive_confidence``, against each false-positive flag's
stored confidence), :class:`PolicyChange` rewrites the flags' ``action`` column, marks the
candidates whose new action excludes them (``flagged_false_negative``, batch by batch, as
curation does) and gives the training pairs and the held-out pairs under the new
false-positive policy. Nothing is judged again: the flags and their relevance are the
parent's; only what each kind's action does changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.config import CurateConfig
from negminer.curation.decisions import CURATION_FLAG_COLUMN, as_pair_rows
from negminer.curation.policy import excludes, false_positive_actions, kind_actions, policies_record

_CONFIDENCE = "feature_false_positive_confidence"

POLICY_KEYS = (
    "false_negative_action",
    "false_positive_action",
    "near_duplicate_action",
    "false_positive_uncertain_action",
    "false_positive_confidence",
)


class PolicyChange:
    """The parent's flags under new actions; call it on each candidate batch.

    Example:
        >>> change = PolicyChange(flagged, CurateConfig(near_duplicate_action="keep"), n_docs=len(docs))
        ...                                                                 # doctest: +SKIP
        >>> derive_files(path, out, ..., pairs=change.training_pairs(pairs), transform=change)
        ...                                                                 # doctest: +SKIP
    """

    def __init__(
        self, flagged: pa.Table, config: CurateConfig, *, n_docs: int, noise: dict[str, Any] | None = None
    ) -> None:
        actions = kind_actions(config, noise)  # auto: from the parent's estimate
        self.actions = policies_record(actions, config)
        kinds = flagged.column("kind").to_pylist()
        _refuse_relabel_change(flagged, actions["false_negative"])
        new = np.asarray([actions[k] for k in kinds], dtype=object)
        positive = np.asarray(kinds, dtype=object) == "false_positive"
        if positive.any() and _CONFIDENCE in flagged.column_names:  # versions before the null check: one action
            confidence = flagged.column(_CONFIDENCE).to_numpy(zero_copy_only=False)[positive]
            new[positive] = false_positive_actions(confidence, int(positive.sum()), config)
        self.flagged = flagged.set_column(flagged.column_names.index("action"), "action", pa.array(new, pa.string()))
        self._n_docs = n_docs
        candidate_side = [k in ("false_negative", "near_duplicate") and excludes(actions[k]) for k in kinds]
        excluded = self.flagged.filter(pa.array(candidate_side, pa.bool_()))
        self._excluded_keys = np.unique(self._keys(excluded))
        self._held_out = held_out_positives(self.flagged)
        held = self._held_out.num_rows
        self.counts = {
            "negatives_excluded": len(self._excluded_keys),
            "pairs_excluded": held,
            "false_positive_kept": int(positive.sum()) - held,
            "false_positive_excluded": held,
        }

    def __call__(self, candidates: pa.Table) -> pa.Table:
        flag = pa.array(np.isin(self._keys(candidates), self._excluded_keys))
        names = candidates.column_names
        if CURATION_FLAG_COLUMN in names:
            return candidates.set_column(names.index(CURATION_FLAG_COLUMN), CURATION_FLAG_COLUMN, flag)
        return candidates.append_column(CURATION_FLAG_COLUMN, flag)

    def held_out(self) -> pa.Table:
        """The given positives flagged ``false_positive`` whose new action takes them out of training."""
        return self._held_out

    def training_pairs(self, pairs: pa.Table) -> pa.Table:
        """`pairs` (the parent's training pairs) with the flagged positives the new policy keeps put
        back and those it excludes taken out, in ``pair_idx`` order."""
        flagged = self.flagged
        positive = pc.and_(pc.equal(flagged.column("kind"), "false_positive"), pc.is_valid(flagged.column("pair_idx")))
        flagged_pairs = flagged.filter(positive)
        present = pc.is_in(flagged_pairs.column("pair_idx").cast(pa.int64()), pairs.column("pair_idx").cast(pa.int64()))
        back = as_pair_rows(_scored_by_cosine(flagged_pairs.filter(pc.invert(present))), pairs.schema)
        merged = pa.concat_tables([pairs, back])
        out = pc.is_in(merged.column("pair_idx").cast(pa.int64()), self.held_out().column("pair_idx").cast(pa.int64()))
        kept = merged.filter(pc.invert(out))
        return kept.take(pc.sort_indices(kept, [("pair_idx", "ascending")]))

    def _keys(self, table: pa.Table) -> np.ndarray:
        anchor = table.column("anchor_idx").to_numpy(zero_copy_only=False).astype(np.int64)
        return anchor * self._n_docs + table.column("doc_idx").to_numpy(zero_copy_only=False).astype(np.int64)


def _refuse_relabel_change(flagged: pa.Table, new_action: str) -> None:
    """Relabelled false negatives are pairs of the version: refilter cannot add or remove them yet."""
    old = set(flagged.filter(pc.equal(flagged.column("kind"), "false_negative")).column("action").to_pylist())
    if old and ("relabel" in old or new_action == "relabel") and old != {new_action}:
        raise NotImplementedError(
            f"refilter cannot change false_negative_action from {'/'.join(sorted(old))} to {new_action} yet: "
            "relabelled false negatives are training pairs of the version; run `negminer mine` with the new policy"
        )


def held_out_positives(flagged: pa.Table) -> pa.Table:
    """The given positives a ``false_positive`` flag holds out of training (action not ``keep``):
    ``pair_idx``, ``anchor_idx``, ``doc_idx`` and their cosine as ``score`` (the flag's ``feature_score``)."""
    mask = pc.and_(
        pc.and_(pc.equal(flagged.column("kind"), "false_positive"), pc.not_equal(flagged.column("action"), "keep")),
        pc.is_valid(flagged.column("pair_idx")),
    )
    held = flagged.filter(mask)
    columns = {name: held.column(name) for name in ("pair_idx", "anchor_idx", "doc_idx")}
    if "feature_score" in held.column_names:
        columns["score"] = held.column("feature_score")
    return pa.table(columns)


def _scored_by_cosine(flagged: pa.Table) -> pa.Table:
    """Flags with their cosine (``feature_score``) as the pairs' ``score`` column."""
    if "score" in flagged.column_names:
        flagged = flagged.drop_columns(["score"])
    return flagged.rename_columns(["score" if c == "feature_score" else c for c in flagged.column_names])
