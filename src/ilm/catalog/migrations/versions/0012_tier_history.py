"""storage by tier over time: daily snapshots (issue 6)

``tier_history``: studies, instances and bytes per tier on a day (the last
snapshot of that day); ``received_history``: what arrived on a day, counted
when it arrived (so that studies deleted later still count as growth). Rows
with ``reconstructed`` were backfilled from the catalog (received_at, the
moves journal) when the first snapshot was taken.

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tier_history",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("studies", sa.BigInteger(), nullable=False),
        sa.Column("instances", sa.BigInteger(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("reconstructed", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", "tier", name="pk_tier_history"),
    )
    op.create_table(
        "received_history",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("studies", sa.BigInteger(), nullable=False),
        sa.Column("instances", sa.BigInteger(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("reconstructed", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", name="pk_received_history"),
    )


def downgrade() -> None:
    op.drop_table("received_history")
    op.drop_table("tier_history")
