"""a pool of workers, one shared rate limit, per-issue counts kept (#15)

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel  # autogenerate writes sqlmodel.sql.sqltypes.AutoString
import subscribers.timestamps


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rate_limit',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('next_at', sa.Float(), nullable=False),
    sa.Column('paused_until', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('send_worker',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('host', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('started_at', subscribers.timestamps.UTCDateTime(), nullable=False),
    sa.Column('heartbeat_at', subscribers.timestamps.UTCDateTime(), nullable=False),
    sa.Column('in_flight', sa.Integer(), nullable=False),
    sa.Column('draining', sa.Boolean(), nullable=False),
    sa.Column('stopped_at', subscribers.timestamps.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('send_worker', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_send_worker_heartbeat_at'), ['heartbeat_at'], unique=False)

    op.create_table('issue_count',
    sa.Column('issue_id', sa.Integer(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['issue_id'], ['issue.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('issue_id', 'state')
    )


def downgrade() -> None:
    op.drop_table('issue_count')
    with op.batch_alter_table('send_worker', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_send_worker_heartbeat_at'))

    op.drop_table('send_worker')
    op.drop_table('rate_limit')
