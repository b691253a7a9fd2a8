"""Comparisons of methods × seeds on one protocol (``semiseg compare``), in modules that import downwards only.

``provenance`` (the stamp, the clean-tree check) ← ``spec`` (experiment files and ``--methods`` entries) ← ``plan``
(one validated config per run) ← ``executor`` (reuse, resume or train one run) ← ``backends`` and ``ray_backend``
(where the runs execute) ; ``spec`` ← ``scores`` (per-case scores collected from run folders into
``per_case.csv``) ← ``tables`` (``compare.md/.csv/.json`` from those scores alone) ; all of them ← ``compare``
(the whole comparison, ``publish`` and ``rebuild``). This file imports nothing, so importing one module loads
only what that module needs.
"""
