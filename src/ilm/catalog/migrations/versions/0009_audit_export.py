"""audit export positions (issue 5): how far the audit trail was sent as DICOM audit messages

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audit_export',
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('last_id', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_audit_export')),
    )


def downgrade() -> None:
    op.drop_table('audit_export')
