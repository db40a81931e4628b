"""Curation: pair features, confident-learning checks (cleanlab), near-duplicates, policies.

One entry point, :func:`curate_candidates`; the pieces are plain functions over arrays and
tables in :mod:`.rows`, :mod:`.features`, :mod:`.lexical`, :mod:`.confident`,
:mod:`.duplicates` and :mod:`.policy`. Reviewers' audit decisions are applied to the next
selection by :mod:`.decisions`.
"""

from negminer.curation.curate import curate_candidates
from negminer.curation.policy import ACTIONS, KINDS, CurationResult, training_pairs

__all__ = ["ACTIONS", "KINDS", "CurationResult", "curate_candidates", "training_pairs"]
