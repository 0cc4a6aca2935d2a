"""Alembic environment: ilm passes its own connection; no URL lives in a file."""

from alembic import context

from ilm.catalog.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
