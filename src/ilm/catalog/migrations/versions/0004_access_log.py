"""access_log: retrievals per study, for access tracking and access-based tiering

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'access_log',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('interface', sa.String(length=16), nullable=False),
        sa.Column('who', sa.String(length=128), server_default='', nullable=False),
        sa.Column('instances', sa.Integer(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_access_log')),
    )
    with op.batch_alter_table('access_log', schema=None) as batch_op:
        batch_op.create_index('ix_access_log_at', ['at'], unique=False)
        batch_op.create_index('ix_access_log_study', ['study_uid'], unique=False)


def downgrade() -> None:
    op.drop_table('access_log')
