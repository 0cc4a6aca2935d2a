"""plan storage (issue 3): the actions a rule decided in the database, one row of integers each

A plan over a million studies writes hundreds of thousands of actions; a
row of ``plan_rule_actions`` holds the study's id and the rule's code
(``plans.rule_codes`` maps it to the decision, tier, rule and reason),
with one primary key and no foreign key to check. A downgrade drops these
rows: the plans made since lose the actions a rule decided (make them again).

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('plans', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rule_codes', sa.Text(), nullable=True))
    op.create_table(
        'plan_rule_actions',
        sa.Column('plan_id', sa.String(length=32), nullable=False),
        sa.Column('study_pk', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('code', sa.Integer(), nullable=False),
        sa.Column('instance_count', sa.Integer(), nullable=False),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('last_accessed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('tiers', sa.Text(), nullable=False),
        sa.Column('state', sa.String(length=16), server_default='pending', nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('plan_id', 'study_pk', name=op.f('pk_plan_rule_actions')),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table('plan_rule_actions')
    with op.batch_alter_table('plans', schema=None) as batch_op:
        batch_op.drop_column('rule_codes')
