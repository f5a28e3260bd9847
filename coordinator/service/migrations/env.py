"""Alembic's environment: migrate over the connection `coordinator.service.store` passes."""

from __future__ import annotations

from alembic import context

from coordinator.service.store import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
