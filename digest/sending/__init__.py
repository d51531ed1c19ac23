"""Sending: an issue to its audience, exactly once.

`send` is the entry point (`send_issue`, `send_test`); `freeze` copies the audience into
deliveries and batches; `ledger` claims and records batches (compare-and-set); `counts` owns the
*effective delivery status* every count is made from; `claimer` says who holds a batch and
whether they still live; `run` is one send's threads (freezer, senders, heartbeats);
`local_time` cuts and claims batches by subscriber time zone; `events` applies what providers
report back. May import `transports`, `mail` and below; never `scheduling`, `ops`, `web`, `cli`.
"""
