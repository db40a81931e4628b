"""Alembic migrations of the audit database (applied by :func:`negminer.audit.db.upgrade`)."""
