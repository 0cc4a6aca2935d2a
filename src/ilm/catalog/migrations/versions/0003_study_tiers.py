"""studies.tiers: the tiers holding a verified copy, kept by ingest and moves

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tiers', sa.Text(), server_default='', nullable=False))
    # Fill it for studies catalogued before this column existed.
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT i.study_pk, l.tier FROM locations l JOIN instances i ON i.id = l.instance_pk "
        "WHERE l.state = 'verified' GROUP BY i.study_pk, l.tier"
    )).fetchall()
    by_study: dict[int, set[str]] = {}
    for pk, tier in rows:
        by_study.setdefault(pk, set()).add(tier)
    for pk, tiers in by_study.items():
        conn.execute(sa.text("UPDATE studies SET tiers = :t WHERE id = :pk"), {"t": "\\".join(sorted(tiers)), "pk": pk})


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('tiers')
