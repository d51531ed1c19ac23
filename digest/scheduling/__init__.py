"""Scheduling: when each newsletter's issue is built and sent.

`rules` (pure) decides which periods are due, caught up or missed; `tick` runs one tick
(`digest run-due`) through `newsletter_tick`, one newsletter at a time; `service` is the
long-running APScheduler process; `leader` picks one leader among several schedulers;
`pipeline` is the seam to the stages it drives (ingest, build, send). May import every stage
below it; `ops`, `web` and `cli` sit above.
"""
