"""Ingest: sources in, articles and their topics out.

`run` drives a run: `fetch` (HTTP with limits) → `charsets` and `feeds` (RSS/Atom via
feedparser, `quickfeed` for plain RSS 2.0; JSON; CSV) → `normalize` (sanitised summaries, dates,
URLs) → `upsert` (dedupe and store) → `topics` (classify against the newsletters' rules).
May import `storage` and `subscribers`; nothing of a later stage.
"""
