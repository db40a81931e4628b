"""Measure what a dataset version does to a model: fine-tune on its training view, then
nDCG@10, recall@100 and MRR@10 on a labelled retrieval set (``negminer evaluate``).

* :mod:`~negminer.evaluation.data`: retrieval sets in the BEIR or ``../shared/data`` layout.
* :mod:`~negminer.evaluation.train`: fine-tuning (MultipleNegativesRankingLoss, fixed budget)
  and scoring (sentence-transformers' InformationRetrievalEvaluator).
* :mod:`~negminer.evaluation.run`: :func:`evaluate`, one call for the whole job.
* :mod:`~negminer.evaluation.records`: the results JSON and where a version's copies live.

torch and sentence-transformers are imported only when a model is loaded.
"""

from __future__ import annotations

from negminer.evaluation.data import RetrievalSet, load_retrieval_set
from negminer.evaluation.run import ArmResult, Evaluation, evaluate

__all__ = ["ArmResult", "Evaluation", "RetrievalSet", "evaluate", "load_retrieval_set"]
