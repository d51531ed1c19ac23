"""Ops: what operators read and run: `status`, `stats`, structured `logs` and the `demo`.

Reads the ledger through `digest.sending.counts`; may import any stage, never `web` or `cli`.
"""
