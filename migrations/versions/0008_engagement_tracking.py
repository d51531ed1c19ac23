"""engagement tracking (#16)

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel  # autogenerate writes sqlmodel.sql.sqltypes.AutoString
import subscribers.timestamps


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('issue_link',
    sa.Column('issue_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['issue_id'], ['issue.id'], ),
    sa.PrimaryKeyConstraint('issue_id', 'position')
    )
    op.create_table('engagement_count',
    sa.Column('hour', subscribers.timestamps.UTCDateTime(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('issue_id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('link', sa.Integer(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['issue_id'], ['issue.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('issue_id', 'kind', 'link', 'hour', name='uq_engagement_bucket')
    )
    with op.batch_alter_table('engagement_count', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_engagement_count_issue_id'), ['issue_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('engagement_count', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_engagement_count_issue_id'))

    op.drop_table('engagement_count')
    op.drop_table('issue_link')
