"""SQLite: a batch's status change counts its pending rows once, not twice (#17)

Migration 0012's SQLite trigger on `send_batch` counted the batch's pending deliveries once for
the state they leave and again for the state they enter. Every claim and every recorded batch
changes a status, inside SQLite's one write lock, so the second count was paid twice per batch
while the other senders waited (1,200 status changes of 1000-row batches scattered over a
million deliveries: 2.1 → 1.2 CPU-s). The rule is the same; tests/integration/test_cheap_counts.py
checks it against a recount. PostgreSQL's statement trigger counted once already.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def _speaks(batch: str) -> str:
    """What a pending delivery is, by its batch's status (`counts.BATCH_SPEAKS_AS`)."""
    return (
        f"CASE {batch} WHEN 'sending' THEN 'sending' WHEN 'accepted' THEN 'accepted' "
        f"WHEN 'failed' THEN 'failed' WHEN 'unknown' THEN 'unknown' ELSE 'pending' END"
    )


_UPSERT = "ON CONFLICT (issue_id, state) DO UPDATE SET n = issue_count.n + excluded.n"
_WHEN = f"WHEN {_speaks('OLD.status')} <> {_speaks('NEW.status')}"

_ONCE = f"""
CREATE TRIGGER digest_count_batch_update AFTER UPDATE OF status ON send_batch
{_WHEN}
BEGIN
  INSERT INTO issue_count (issue_id, state, n)
  SELECT NEW.issue_id, s.state, s.k * c.n
    FROM (SELECT count(*) AS n FROM delivery
           WHERE batch_id = NEW.id AND status = 'pending') AS c,
         (SELECT {_speaks('OLD.status')} AS state, -1 AS k
          UNION ALL SELECT {_speaks('NEW.status')}, 1) AS s
   WHERE c.n > 0
  {_UPSERT};
END"""

_TWICE = f"""
CREATE TRIGGER digest_count_batch_update AFTER UPDATE OF status ON send_batch
{_WHEN}
BEGIN
  INSERT INTO issue_count (issue_id, state, n)
  SELECT issue_id, state, sum(k) FROM (
    SELECT NEW.issue_id AS issue_id, {_speaks('OLD.status')} AS state, -count(*) AS k
      FROM delivery WHERE batch_id = NEW.id AND status = 'pending'
    UNION ALL
    SELECT NEW.issue_id, {_speaks('NEW.status')}, count(*)
      FROM delivery WHERE batch_id = NEW.id AND status = 'pending'
  ) WHERE true GROUP BY issue_id, state HAVING sum(k) <> 0
  {_UPSERT};
END"""


def _replace(trigger: str) -> None:
    if op.get_bind().dialect.name == 'sqlite':
        op.execute('DROP TRIGGER IF EXISTS digest_count_batch_update')
        op.execute(trigger)


def upgrade() -> None:
    _replace(_ONCE)


def downgrade() -> None:
    _replace(_TWICE)
