"""PostgreSQL: a planned batch's readers' ids (`send_batch.members`) stored uncompressed (#14)

A personal issue's freeze appends each page's readers to their open batches: a batch's id list
grows to a few kilobytes in tens of appends, and with the default storage PostgreSQL compresses
the whole value again on each (pglz). Out of line but uncompressed (`EXTERNAL`), the same
appends cost about a third (65,000 appends to 1,300 batches: 6.7 → 2.1 s), and the fill reads
the ids without decompressing them. Nothing else is stored there; SQLite has no such setting.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE send_batch ALTER COLUMN members SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE send_batch ALTER COLUMN members SET STORAGE EXTENDED")
