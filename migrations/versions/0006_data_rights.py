"""data rights (#16): forgotten addresses kept only as a keyed hash

`digest subscribers forget` erases an address everywhere: its suppression row keeps only
`email_hash` (HMAC-SHA256 of the normalised address, hex) and no `email`, and consent events
keep their action, date and newsletter but no address.

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel  # autogenerate writes sqlmodel.sql.sqltypes.AutoString
import subscribers.timestamps


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('suppression', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('email_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.alter_column(
            'email', existing_type=sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True
        )
        batch_op.create_index(batch_op.f('ix_suppression_email_hash'), ['email_hash'], unique=True)

    with op.batch_alter_table('consent_event', schema=None) as batch_op:
        batch_op.alter_column(
            'email', existing_type=sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True
        )


def downgrade() -> None:
    # A forgotten address has no clear-text form to go back to: its hashed suppression row
    # cannot live in 0005's schema (email NOT NULL), and its consent events get an empty address.
    op.execute("DELETE FROM suppression WHERE email IS NULL")
    op.execute("UPDATE consent_event SET email = '' WHERE email IS NULL")
    with op.batch_alter_table('consent_event', schema=None) as batch_op:
        batch_op.alter_column(
            'email', existing_type=sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False
        )

    with op.batch_alter_table('suppression', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_suppression_email_hash'))
        batch_op.alter_column(
            'email', existing_type=sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False
        )
        batch_op.drop_column('email_hash')
