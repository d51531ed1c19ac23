"""Storage: the engine, sessions, migrations (`db`) and every table (`models`).

The lowest stage: it imports only `digest.paths` and `subscribers` (whose tables share the
metadata), never another stage.
"""
