"""Artifacts of a run: the event schema and files, the run directory, the journal.

Depends on the model only. Every file here is created with mode "x": an artifact is
never overwritten.
"""
