"""initial schema

Revision ID: 0001
Revises: 
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('conflicts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('kept_at', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conflicts'))
    )
    with op.batch_alter_table('conflicts', schema=None) as batch_op:
        batch_op.create_index('ix_conflicts_sop', ['sop_uid'], unique=False)

    op.create_table('patients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=64), server_default='', nullable=False),
    sa.Column('name', sa.String(length=200), server_default='', nullable=False),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('birth_date_raw', sa.String(length=32), server_default='', nullable=False),
    sa.Column('sex', sa.String(length=16), server_default='', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patients')),
    sa.UniqueConstraint('patient_id', 'issuer', name='uq_patients_identity')
    )
    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_pk', sa.Integer(), nullable=False),
    sa.Column('study_date', sa.Date(), nullable=True),
    sa.Column('study_date_raw', sa.String(length=32), server_default='', nullable=False),
    sa.Column('study_time', sa.String(length=32), server_default='', nullable=False),
    sa.Column('accession_number', sa.String(length=64), server_default='', nullable=False),
    sa.Column('description', sa.String(length=256), server_default='', nullable=False),
    sa.Column('study_id', sa.String(length=32), server_default='', nullable=False),
    sa.Column('referring_physician', sa.String(length=200), server_default='', nullable=False),
    sa.Column('institution_name', sa.String(length=128), server_default='', nullable=False),
    sa.Column('station_names', sa.Text(), server_default='', nullable=False),
    sa.Column('manufacturers', sa.Text(), server_default='', nullable=False),
    sa.Column('modalities', sa.Text(), server_default='', nullable=False),
    sa.Column('sop_classes', sa.Text(), server_default='', nullable=False),
    sa.Column('body_parts', sa.Text(), server_default='', nullable=False),
    sa.Column('patient_age', sa.String(length=16), server_default='', nullable=False),
    sa.Column('patient_identity_removed', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('series_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('instance_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('state', sa.String(length=16), server_default='active', nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_accessed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['patient_pk'], ['patients.id'], name=op.f('fk_studies_patient_pk_patients')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_studies')),
    sa.UniqueConstraint('study_uid', name=op.f('uq_studies_study_uid'))
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index('ix_studies_date', ['study_date'], unique=False)
        batch_op.create_index('ix_studies_patient', ['patient_pk'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('modality', sa.String(length=16), server_default='', nullable=False),
    sa.Column('description', sa.String(length=256), server_default='', nullable=False),
    sa.Column('number', sa.Integer(), nullable=True),
    sa.Column('body_part', sa.String(length=64), server_default='', nullable=False),
    sa.Column('station_name', sa.String(length=64), server_default='', nullable=False),
    sa.Column('series_date', sa.Date(), nullable=True),
    sa.Column('instance_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.id'], name=op.f('fk_series_study_pk_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series')),
    sa.UniqueConstraint('series_uid', name=op.f('uq_series_series_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index('ix_series_study', ['study_pk'], unique=False)

    op.create_table('instances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('series_pk', sa.Integer(), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('number', sa.Integer(), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['series_pk'], ['series.id'], name=op.f('fk_instances_series_pk_series')),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.id'], name=op.f('fk_instances_study_pk_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instances')),
    sa.UniqueConstraint('sop_uid', name=op.f('uq_instances_sop_uid'))
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index('ix_instances_series', ['series_pk'], unique=False)
        batch_op.create_index('ix_instances_study', ['study_pk'], unique=False)

    op.create_table('locations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('instance_pk', sa.Integer(), nullable=False),
    sa.Column('tier', sa.String(length=64), nullable=False),
    sa.Column('object_key', sa.String(length=255), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('verified_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['instance_pk'], ['instances.id'], name=op.f('fk_locations_instance_pk_instances')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_locations')),
    sa.UniqueConstraint('instance_pk', 'tier', name='uq_locations_instance_tier')
    )
    with op.batch_alter_table('locations', schema=None) as batch_op:
        batch_op.create_index('ix_locations_tier_state', ['tier', 'state'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('locations', schema=None) as batch_op:
        batch_op.drop_index('ix_locations_tier_state')

    op.drop_table('locations')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index('ix_instances_study')
        batch_op.drop_index('ix_instances_series')

    op.drop_table('instances')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index('ix_series_study')

    op.drop_table('series')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index('ix_studies_patient')
        batch_op.drop_index('ix_studies_date')

    op.drop_table('studies')
    op.drop_table('patients')
    with op.batch_alter_table('conflicts', schema=None) as batch_op:
        batch_op.drop_index('ix_conflicts_sop')

    op.drop_table('conflicts')

