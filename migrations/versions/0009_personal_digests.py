"""personal digests (#14): candidates per merged topic, variants, and who got which

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel  # autogenerate writes sqlmodel.sql.sqltypes.AutoString
import subscribers.timestamps


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('issue_candidate',
    sa.Column('issue_id', sa.Integer(), nullable=False),
    sa.Column('topic', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('score', sa.Integer(), nullable=False),
    sa.Column('pinned', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['article.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['issue_id'], ['issue.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('issue_id', 'topic', 'article_id')
    )
    op.create_table('issue_variant',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('issue_id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('topics', sa.JSON(), nullable=False),
    sa.Column('sections', sa.JSON(), nullable=False),
    sa.Column('articles', sa.Integer(), nullable=False),
    sa.Column('readers', sa.Integer(), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('html', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('html_bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', subscribers.timestamps.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['issue_id'], ['issue.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('issue_id', 'key', name='uq_issue_variant_key')
    )
    with op.batch_alter_table('issue_variant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_issue_variant_issue_id'), ['issue_id'], unique=False)

    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.add_column(sa.Column('variant_id', sa.Integer(), nullable=True))

    with op.batch_alter_table('send_batch', schema=None) as batch_op:
        batch_op.add_column(sa.Column('variant_id', sa.Integer(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('send_batch', schema=None) as batch_op:
        batch_op.drop_column('variant_id')

    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_column('variant_id')

    with op.batch_alter_table('issue_variant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_issue_variant_issue_id'))

    op.drop_table('issue_variant')
    op.drop_table('issue_candidate')
