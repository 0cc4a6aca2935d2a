"""encryption at rest: which master key wraps each encrypted object (issue 5)

Table object_keys: for an object on an encrypted tier, the id of the master
key its header names, as ilm last saw it (ilm keys rotate / retire).

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'object_keys',
        sa.Column('tier', sa.String(length=64), nullable=False),
        sa.Column('object_key', sa.String(length=255), nullable=False),
        sa.Column('key_id', sa.String(length=32), nullable=False),
        sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('tier', 'object_key', name=op.f('pk_object_keys')),
    )
    with op.batch_alter_table('object_keys', schema=None) as batch_op:
        batch_op.create_index('ix_object_keys_key_id', ['key_id'], unique=False)


def downgrade() -> None:
    op.drop_table('object_keys')
