"""issue counts kept by the database for issues still sending (#15)

Triggers keep `issue_count` exact for every issue with deliveries, sending or sent: each insert
or update of a delivery, and each status change of a batch, moves its rows between effective
states in the same transaction (see `digest.sending.snapshot`). The effective-status rule is
written out here as SQL; `digest.sending.counts` owns it and
tests/integration/test_cheap_counts.py checks that the two agree for every batch status. Issues
that had no stored counts (still sending, or sent before 0010) are counted once here.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

LOCK_CLASS = 15015  # pg_advisory_xact_lock(LOCK_CLASS, issue_id): `snapshot.LOCK_CLASS`


def _speaks(batch: str) -> str:
    """What a pending delivery is, by its batch's status (`counts.BATCH_SPEAKS_AS`)."""
    return (
        f"CASE {batch} WHEN 'sending' THEN 'sending' WHEN 'accepted' THEN 'accepted' "
        f"WHEN 'failed' THEN 'failed' WHEN 'unknown' THEN 'unknown' ELSE 'pending' END"
    )


def _effective(own: str, batch: str) -> str:
    return f"CASE WHEN {own} <> 'pending' THEN {own} ELSE {_speaks(batch)} END"


_UPSERT = "ON CONFLICT (issue_id, state) DO UPDATE SET n = issue_count.n + excluded.n"

_PG = f"""
CREATE FUNCTION digest_lock_counts(ids integer[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock({LOCK_CLASS}, i)
     FROM (SELECT DISTINCT unnest(ids) AS i ORDER BY 1) AS s;
END $$;

CREATE FUNCTION digest_count_delivery_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM digest_lock_counts(ARRAY(SELECT DISTINCT issue_id FROM new_rows));
  INSERT INTO issue_count (issue_id, state, n)
  SELECT issue_id, state, sum(k) FROM (
    SELECT d.issue_id, {_effective('d.status', 'b.status')} AS state, d.k
      FROM (SELECT issue_id, status, batch_id, count(*) AS k FROM new_rows GROUP BY 1, 2, 3) AS d
      LEFT JOIN send_batch AS b ON b.id = d.batch_id
    UNION ALL SELECT issue_id, 'opened', count(*) FROM new_rows WHERE opened GROUP BY 1
    UNION ALL SELECT issue_id, 'clicked', count(*) FROM new_rows WHERE clicked GROUP BY 1
  ) AS s GROUP BY 1, 2 ORDER BY 1, 2
  {_UPSERT};
  RETURN NULL;
END $$;

CREATE FUNCTION digest_count_delivery_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE ids integer[];
BEGIN
  SELECT array_agg(DISTINCT n.issue_id) || array_agg(DISTINCT o.issue_id) INTO ids
    FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
   WHERE o.status <> n.status OR o.batch_id IS DISTINCT FROM n.batch_id
      OR o.opened <> n.opened OR o.clicked <> n.clicked OR o.issue_id <> n.issue_id;
  IF ids IS NULL THEN RETURN NULL; END IF;
  PERFORM digest_lock_counts(ids);
  WITH changed AS (
    SELECT o.issue_id AS old_issue, n.issue_id AS new_issue, o.status AS old_status,
           o.batch_id AS old_batch, n.status AS new_status, n.batch_id AS new_batch,
           n.opened::int - o.opened::int AS opened, n.clicked::int - o.clicked::int AS clicked
      FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
     WHERE o.status <> n.status OR o.batch_id IS DISTINCT FROM n.batch_id
        OR o.opened <> n.opened OR o.clicked <> n.clicked OR o.issue_id <> n.issue_id
  ), moves AS (
    SELECT c.old_issue AS issue_id, {_effective('c.old_status', 'b.status')} AS state, -1 AS k
      FROM changed AS c LEFT JOIN send_batch AS b ON b.id = c.old_batch
    UNION ALL
    SELECT c.new_issue, {_effective('c.new_status', 'b.status')}, 1
      FROM changed AS c LEFT JOIN send_batch AS b ON b.id = c.new_batch
    UNION ALL SELECT new_issue, 'opened', opened FROM changed WHERE opened <> 0
    UNION ALL SELECT new_issue, 'clicked', clicked FROM changed WHERE clicked <> 0
  )
  INSERT INTO issue_count (issue_id, state, n)
  SELECT issue_id, state, sum(k) FROM moves GROUP BY 1, 2 HAVING sum(k) <> 0 ORDER BY 1, 2
  {_UPSERT};
  RETURN NULL;
END $$;

CREATE FUNCTION digest_count_batch_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE ids integer[];
BEGIN
  SELECT array_agg(DISTINCT n.issue_id) INTO ids
    FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
   WHERE {_speaks('o.status')} <> {_speaks('n.status')};
  IF ids IS NULL THEN RETURN NULL; END IF;
  PERFORM digest_lock_counts(ids);
  WITH changed AS (
    SELECT n.issue_id, {_speaks('o.status')} AS was, {_speaks('n.status')} AS now,
           (SELECT count(*) FROM delivery AS d
             WHERE d.batch_id = n.id AND d.status = 'pending') AS k
      FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
     WHERE {_speaks('o.status')} <> {_speaks('n.status')}
  ), moves AS (
    SELECT issue_id, was AS state, -k AS k FROM changed
    UNION ALL SELECT issue_id, now, k FROM changed
  )
  INSERT INTO issue_count (issue_id, state, n)
  SELECT issue_id, state, sum(k) FROM moves GROUP BY 1, 2 HAVING sum(k) <> 0 ORDER BY 1, 2
  {_UPSERT};
  RETURN NULL;
END $$;

CREATE TRIGGER digest_count_delivery_insert AFTER INSERT ON delivery
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION digest_count_delivery_insert();
CREATE TRIGGER digest_count_delivery_update AFTER UPDATE ON delivery
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION digest_count_delivery_update();
CREATE TRIGGER digest_count_batch_update AFTER UPDATE ON send_batch
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION digest_count_batch_update();
"""

_SQLITE_BATCH_OF = "(SELECT status FROM send_batch WHERE id = {row}.batch_id)"
_SQLITE = [
    f"""
CREATE TRIGGER digest_count_delivery_insert AFTER INSERT ON delivery BEGIN
  INSERT INTO issue_count (issue_id, state, n)
  SELECT NEW.issue_id, {_effective('NEW.status', _SQLITE_BATCH_OF.format(row='NEW'))}, 1
   WHERE true
  {_UPSERT};
END""",
    f"""
CREATE TRIGGER digest_count_delivery_insert_flags AFTER INSERT ON delivery
WHEN NEW.opened OR NEW.clicked BEGIN
  INSERT INTO issue_count (issue_id, state, n) SELECT NEW.issue_id, 'opened', 1 WHERE NEW.opened
  {_UPSERT};
  INSERT INTO issue_count (issue_id, state, n) SELECT NEW.issue_id, 'clicked', 1 WHERE NEW.clicked
  {_UPSERT};
END""",
    f"""
CREATE TRIGGER digest_count_delivery_update AFTER UPDATE OF status, batch_id, opened, clicked,
  issue_id ON delivery
WHEN OLD.status IS NOT NEW.status OR OLD.batch_id IS NOT NEW.batch_id
  OR OLD.opened IS NOT NEW.opened OR OLD.clicked IS NOT NEW.clicked
  OR OLD.issue_id IS NOT NEW.issue_id
BEGIN
  INSERT INTO issue_count (issue_id, state, n)
  SELECT issue_id, state, sum(k) FROM (
    SELECT OLD.issue_id AS issue_id,
           {_effective('OLD.status', _SQLITE_BATCH_OF.format(row='OLD'))} AS state, -1 AS k
    UNION ALL
    SELECT NEW.issue_id, {_effective('NEW.status', _SQLITE_BATCH_OF.format(row='NEW'))}, 1
    UNION ALL SELECT NEW.issue_id, 'opened', NEW.opened - OLD.opened
    UNION ALL SELECT NEW.issue_id, 'clicked', NEW.clicked - OLD.clicked
  ) WHERE true GROUP BY issue_id, state HAVING sum(k) <> 0
  {_UPSERT};
END""",
    f"""
CREATE TRIGGER digest_count_batch_update AFTER UPDATE OF status ON send_batch
WHEN {_speaks('OLD.status')} <> {_speaks('NEW.status')}
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
END""",
]

# Issues with deliveries but no stored counts: counted once, by the rule the triggers keep.
_UNCOUNTED = (
    "SELECT i.id FROM issue AS i WHERE i.status IN ('sending', 'sent') AND NOT EXISTS "
    "(SELECT 1 FROM issue_count AS c WHERE c.issue_id = i.id AND c.state <> 'settled')"
)
_BACKFILL = f"""
INSERT INTO issue_count (issue_id, state, n)
SELECT issue_id, state, sum(k) FROM (
  SELECT d.issue_id AS issue_id, {_effective('d.status', 'b.status')} AS state, 1 AS k
    FROM delivery AS d LEFT JOIN send_batch AS b ON b.id = d.batch_id
   WHERE d.issue_id IN ({_UNCOUNTED})
  UNION ALL SELECT issue_id, 'opened', 1 FROM delivery
   WHERE opened AND issue_id IN ({_UNCOUNTED})
  UNION ALL SELECT issue_id, 'clicked', 1 FROM delivery
   WHERE clicked AND issue_id IN ({_UNCOUNTED})
) AS s WHERE true GROUP BY issue_id, state
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(_PG)
    else:
        for statement in _SQLITE:
            op.execute(statement)
    op.execute(_BACKFILL)


def downgrade() -> None:
    for name, table in (
        ('digest_count_delivery_insert', 'delivery'),
        ('digest_count_delivery_insert_flags', 'delivery'),
        ('digest_count_delivery_update', 'delivery'),
        ('digest_count_batch_update', 'send_batch'),
    ):
        if op.get_bind().dialect.name == 'postgresql':
            op.execute(f'DROP TRIGGER IF EXISTS {name} ON {table}')
            op.execute(f'DROP FUNCTION IF EXISTS {name}()')
        else:
            op.execute(f'DROP TRIGGER IF EXISTS {name}')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP FUNCTION IF EXISTS digest_lock_counts(integer[])')
    # Before 0012 an issue still sending had no stored counts (it was counted live).
    op.execute(
        "DELETE FROM issue_count WHERE state <> 'settled' AND issue_id IN "
        "(SELECT id FROM issue WHERE status = 'sending')"
    )
