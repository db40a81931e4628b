"""Alembic environment for the audit database.

Run through :func:`negminer.audit.db.upgrade`, which passes an open connection (inside the
transaction that holds the migration lock) as ``config.attributes["connection"]``. To write a
new revision::

    python -c "from alembic import command; from negminer.audit.db import alembic_config; \\
        c = alembic_config(); c.set_main_option('sqlalchemy.url', 'sqlite:///scratch.db'); \\
        command.upgrade(c, 'head'); command.revision(c, 'what changed', autogenerate=True)"
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from negminer.audit.db import Base

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the caller's connection, or one opened on ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as own:
        _run(own)
        own.commit()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
