"""Worked examples of ``research.classical`` (``python -m experiments.classical --algos=...``).

Each module exposes ``run(workdir, *, seed=0, quick=False) -> dict``: it reproduces its seed section's worked
example, writes its figures (PNG) into ``workdir`` and returns the headline numbers (JSON-serialisable).
"""
