"""fixity: verification state of copies (issue 5)

locations.problem / problem_at: why and when a fixity check marked a copy
'bad' or 'missing' (NULL while the copy is good); locations.replica: the copy
was written to a replica tier (``replicas`` tier option), so moves keep it and
studies.tiers does not count it; an index on verified_at so that the scrub
picks the copies checked longest ago first.

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('locations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('replica', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('problem', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('problem_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_locations_verified_at', ['verified_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('locations', schema=None) as batch_op:
        batch_op.drop_index('ix_locations_verified_at')
        batch_op.drop_column('problem_at')
        batch_op.drop_column('problem')
        batch_op.drop_column('replica')
