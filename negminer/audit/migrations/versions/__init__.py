"""Alembic revision scripts of the audit database, oldest first by ``down_revision``."""
