"""bounces and dkim (#16): soft bounces in a row per subscriber (DKIM needs no schema)

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

import subscribers.timestamps

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounce_score",
        sa.Column("subscriber_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("soft_in_row", sa.Integer(), nullable=False),
        sa.Column("last_delivery_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", subscribers.timestamps.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subscriber_id"),
    )


def downgrade() -> None:
    op.drop_table("bounce_score")
