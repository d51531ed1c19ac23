"""Issues: which articles go into a newsletter's issue for a period, and the editor's changes.

`periods` is the pure arithmetic of periods (a period is a fire time of the newsletter's
crontab, `digest.cron`); `assemble` builds or refreshes an issue and renders it; `editorial`
applies pins, exclusions, subject, intro and approval. May import `rendering`, `ingest` and
`storage`; nothing above.
"""
