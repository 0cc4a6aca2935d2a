"""immutability: retain-until of copies (issue 5)

locations.retain_until and locations.lock_mode: a copy on a WORM tier is
locked until that moment (governance or compliance mode).

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('locations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retain_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lock_mode', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('locations', schema=None) as batch_op:
        batch_op.drop_column('lock_mode')
        batch_op.drop_column('retain_until')
