"""restore leases: one worker copies a restore at a time, across processes (issue 4)

restores.lease_owner ("host:pid:nonce" of the worker copying it, '' when none)
and restores.lease_until (when the lease lapses unless renewed). A worker
claims a due restore with a compare-and-set on these; another process skips it
while the lease is live, and takes it over once the lease lapses or (on the
same host) once the owner's process is gone.

Revision ID: 0014
Revises: 0013
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("restores") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(128), nullable=False, server_default=""))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("restores") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
