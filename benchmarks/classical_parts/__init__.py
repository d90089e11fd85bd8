"""Per-module parts of ``benchmarks/classical.py``: each ``<group>.py`` exposes ``rows(repeats) -> list[dict]``.

A row: ``{"op": str, "size": str, "peer": str, "jax_ms": float, "peer_ms": float, "ratio": peer_ms / jax_ms}``
(ratio > 1: JAX is faster). Time with ``common.median_ms`` (jitted JAX function, after a warm-up call, results
blocked on).
"""
