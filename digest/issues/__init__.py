"""Issues: which articles go into a newsletter's issue for a period, and the editor's changes.

`cron` and `periods` are the pure arithmetic of periods (a period is a crontab fire time);
`assemble` builds or refreshes an issue and renders it; `editorial` applies pins, exclusions,
subject, intro and approval. May import `storage`, `rendering` and `ingest`'s value types.
"""
