"""Subscribers, lists, consent, tokens, unsubscribe and suppression.

This package never imports `digest`: it is handed a database session and plain values, so it
can be reused by any sender (and, later, by personal digests that span several newsletters).
"""
