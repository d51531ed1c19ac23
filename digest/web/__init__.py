"""The web app served by `digest serve`: studio, unsubscribe and preferences pages, the
subscribe form, webhooks, push API, metrics.

`server` lists every router; routers take their App from `deps` (never from `server`), and every
public path comes from `digest.mail.links`. May import any stage; only `cli` sits above.
"""
