"""Comparisons of methods × seeds on one protocol, in modules that import downwards only.

``spec`` (experiment files and ``--methods`` entries) ← ``plan`` (one validated config per run) ← ``executor``
(reuse, resume or train one run) ← ``backends`` / ``ray_backend`` (where the runs execute) ← ``scores`` (per-case
scores collected from run folders into ``per_case.csv``) ← ``tables`` (``compare.md/.csv/.json`` from those
scores) ← ``compare`` (the whole comparison, ``--publish`` and ``--from-results``). ``provenance`` (the stamp)
depends on nothing here. This file imports nothing, so ``semiseg.experiment.spec`` stays as light as its imports.
"""
