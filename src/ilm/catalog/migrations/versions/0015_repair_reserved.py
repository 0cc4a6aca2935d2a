"""repair catalogs that passed revisions 0012 and 0013 while they were reserved no-ops

0012 (tier history) and 0013 (plan storage) were committed empty, as reserved
revisions, and filled later; a catalog migrated in between records them as
applied without their tables, and Alembic never runs them again. This
revision creates what they create when it is missing (nothing on a catalog
that ran them filled, or any new catalog).

Revision ID: 0015
Revises: 0014
"""
import importlib.util
from pathlib import Path

from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def _revision(name: str):  # type: ignore[no-untyped-def]
    """The sibling revision file ``name`` as a module (Alembic loads revisions by path)."""
    spec = importlib.util.spec_from_file_location(f"_ilm_revision_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    tables = set(inspector.get_table_names())
    if "tier_history" not in tables and "received_history" not in tables:
        _revision("0012_tier_history").upgrade()
    plans_columns = {c["name"] for c in inspector.get_columns("plans")}
    if "plan_rule_actions" not in tables and "rule_codes" not in plans_columns:
        _revision("0013_plan_storage").upgrade()


def downgrade() -> None:
    pass  # what it created belongs to 0012 and 0013, whose downgrades drop it
