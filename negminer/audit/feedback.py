"""Read reviewers' decisions from the audit database for the next selection.

Contract: :func:`load_decisions` returns the effective decisions of one dataset (one row per
``(anchor_id, doc_id)``, columns of :data:`negminer.audit.queries.DECISIONS_SCHEMA`), or an
empty table when there is no database. Applying them to a candidate table and the training
pairs is curation's job: :func:`negminer.curation.decisions.apply_decisions` (in memory) and
:class:`negminer.curation.decisions.BatchedFeedback` (batch by batch).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa


def load_decisions(root: str | Path, name: str, *, db_url: str | None = None) -> pa.Table:
    """The effective decisions of dataset `name`, or an empty table when there is no database.

    Args:
        root: the datasets root; the default database is ``ROOT/audit.db``.
        name: the dataset name.
        db_url: a SQLAlchemy URL overriding the default (else ``$NEGMINER_AUDIT_DB``).

    Example:
        >>> decisions = load_decisions("datasets", "scifact-sample")  # doctest: +SKIP
        >>> apply_decisions(cands, decisions, anchors=a, docs=d, pairs=p, extra_positives=False)  # doctest: +SKIP
    """
    from negminer.audit.db import DB_FILE, ENV_DB_URL, default_url, open_db
    from negminer.audit.queries import DECISIONS_SCHEMA, latest_decisions

    url = db_url or os.environ.get(ENV_DB_URL)
    if url is None:
        if not (Path(root) / DB_FILE).exists():
            return DECISIONS_SCHEMA.empty_table()
        url = default_url(root)
    engine = open_db(url)
    try:
        return latest_decisions(engine, name)
    finally:
        engine.dispose()
