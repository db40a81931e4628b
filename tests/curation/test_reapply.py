"""PolicyChange: a stored version's flags under new policies (refilter), auto resolved from its estimate."""

from __future__ import annotations

import pyarrow as pa
import pytest

from negminer.config import CurateConfig
from negminer.curation.reapply import PolicyChange


def _flags() -> pa.Table:
    return pa.table(
        {
            "kind": ["false_negative", "false_negative"],
            "action": ["drop", "drop"],
            "anchor_idx": pa.array([0, 1], pa.int32()),
            "doc_idx": pa.array([5, 6], pa.int32()),
            "pair_idx": pa.array([None, None], pa.int32()),
        }
    )


@pytest.mark.parametrize(("noise", "action", "excluded"), [(0.02, "keep", 0), (0.3, "drop", 2), (None, "drop", 2)])
def test_auto_takes_the_parents_estimate(noise, action, excluded):
    estimate = None if noise is None else {"negatives_relevant": noise}
    change = PolicyChange(_flags(), CurateConfig(), n_docs=10, noise=estimate)
    assert change.flagged.column("action").to_pylist() == [action, action]
    assert change.actions["false_negative_action"] == action, "what refilter's manifest records as policies"
    assert change.counts["negatives_excluded"] == excluded
    candidates = pa.table({"anchor_idx": pa.array([0, 1, 1], pa.int32()), "doc_idx": pa.array([5, 6, 7], pa.int32())})
    assert change(candidates).column("flagged_false_negative").to_pylist() == [action == "drop"] * 2 + [False]
