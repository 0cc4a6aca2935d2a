"""lifecycle tables

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=True),
    sa.Column('plan_id', sa.String(length=32), nullable=True),
    sa.Column('rule_id', sa.String(length=128), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
    sa.UniqueConstraint('hash', name=op.f('uq_audit_log_hash'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_log_study', ['study_uid'], unique=False)

    op.create_table('holds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('released_by', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_holds'))
    )
    with op.batch_alter_table('holds', schema=None) as batch_op:
        batch_op.create_index('ix_holds_target', ['scope', 'target'], unique=False)

    op.create_table('plans',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('as_of', sa.Date(), nullable=False),
    sa.Column('policy_name', sa.String(length=128), nullable=False),
    sa.Column('policy_path', sa.Text(), nullable=False),
    sa.Column('policy_sha256', sa.String(length=64), nullable=False),
    sa.Column('catalog_sha256', sa.String(length=64), nullable=False),
    sa.Column('plan_sha256', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('approved_by', sa.String(length=128), nullable=True),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_plans'))
    )
    op.create_table('tombstones',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('study_date', sa.Date(), nullable=True),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('rule_id', sa.String(length=128), nullable=True),
    sa.Column('plan_id', sa.String(length=32), nullable=True),
    sa.Column('approved_by', sa.String(length=128), nullable=True),
    sa.Column('expired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('purged_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tombstones')),
    sa.UniqueConstraint('study_uid', name=op.f('uq_tombstones_study_uid'))
    )
    op.create_table('plan_actions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('plan_id', sa.String(length=32), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('target_tier', sa.String(length=64), nullable=True),
    sa.Column('rule_id', sa.String(length=128), nullable=True),
    sa.Column('vetoes', sa.Text(), server_default='', nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('instance_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('state', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['plan_id'], ['plans.id'], name=op.f('fk_plan_actions_plan_id_plans')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_plan_actions')),
    sa.UniqueConstraint('plan_id', 'study_uid', name='uq_plan_actions_plan_study')
    )
    with op.batch_alter_table('plan_actions', schema=None) as batch_op:
        batch_op.create_index('ix_plan_actions_state', ['plan_id', 'state'], unique=False)

    op.create_table('moves',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('plan_id', sa.String(length=32), nullable=True),
    sa.Column('instance_pk', sa.Integer(), nullable=False),
    sa.Column('src_tier', sa.String(length=64), nullable=False),
    sa.Column('dst_tier', sa.String(length=64), nullable=False),
    sa.Column('object_key', sa.String(length=255), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_pk'], ['instances.id'], name=op.f('fk_moves_instance_pk_instances')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_moves'))
    )
    with op.batch_alter_table('moves', schema=None) as batch_op:
        batch_op.create_index('ix_moves_state', ['state'], unique=False)

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('labels', sa.Text(), server_default='', nullable=False))
        batch_op.add_column(sa.Column('quarantined_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('quarantine_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('expired_rule', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('expired_plan', sa.String(length=32), nullable=True))




def downgrade() -> None:

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('expired_plan')
        batch_op.drop_column('expired_rule')
        batch_op.drop_column('quarantine_until')
        batch_op.drop_column('quarantined_at')
        batch_op.drop_column('labels')

    with op.batch_alter_table('moves', schema=None) as batch_op:
        batch_op.drop_index('ix_moves_state')

    op.drop_table('moves')
    with op.batch_alter_table('plan_actions', schema=None) as batch_op:
        batch_op.drop_index('ix_plan_actions_state')

    op.drop_table('plan_actions')
    op.drop_table('tombstones')
    op.drop_table('plans')
    with op.batch_alter_table('holds', schema=None) as batch_op:
        batch_op.drop_index('ix_holds_target')

    op.drop_table('holds')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_study')

    op.drop_table('audit_log')

