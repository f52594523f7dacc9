"""Synthesized environment families (importing this registers them) and the synthesis pipeline.

Families: ``trip`` (planning under a budget), ``lookup`` (database questions), ``code`` (a Python
interpreter in the sandbox), ``search`` (multi-hop search over a document collection).
"""
from envs.synth import code, lookup, search, trip  # noqa: F401 - registers the families
