"""Audit: reviewers decide on the pairs the curation flagged; decisions feed the next run.

* :mod:`negminer.audit.db`: the SQLAlchemy models, engine and Alembic migrations.
* :mod:`negminer.audit.loader`: loads a version's ``flagged.parquet`` (with texts and scores).
* :mod:`negminer.audit.queries`: the review queue, progress, recording decisions.
* :mod:`negminer.audit.feedback`: reads the decisions for the next selection (applied by
  :mod:`negminer.curation.decisions`).
* :mod:`negminer.audit.export`: CSV, JSONL, Argilla and Label Studio exports.
* :mod:`negminer.audit.web` and :mod:`negminer.audit.cli`: the review page and commands.

This module stays import-light (the CLI imports it at start-up).
"""

from __future__ import annotations

DECISIONS = ("is_positive", "is_negative", "drop_pair", "skip")
ENV_DB_URL = "NEGMINER_AUDIT_DB"
