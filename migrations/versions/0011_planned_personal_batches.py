"""personal batches planned before they are frozen (#14)

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('send_batch', schema=None) as batch_op:
        batch_op.add_column(sa.Column('members', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('send_batch', schema=None) as batch_op:
        batch_op.drop_column('members')
