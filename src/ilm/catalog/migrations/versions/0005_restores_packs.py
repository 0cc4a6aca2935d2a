"""restores table; locations.expires_at (restored copies) and pack byte ranges

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'restores',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('archive_tier', sa.String(length=64), nullable=False),
        sa.Column('target_tier', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('requested_by', sa.String(length=128), server_default='', nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ready_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('detail', sa.Text(), server_default='', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_restores')),
    )
    with op.batch_alter_table('restores', schema=None) as batch_op:
        batch_op.create_index('ix_restores_state', ['state'], unique=False)
        batch_op.create_index('ix_restores_study', ['study_uid'], unique=False)
    with op.batch_alter_table('locations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('pack_offset', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('pack_length', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('locations', schema=None) as batch_op:
        batch_op.drop_column('pack_length')
        batch_op.drop_column('pack_offset')
        batch_op.drop_column('expires_at')
    op.drop_table('restores')
