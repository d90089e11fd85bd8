"""Benchmark rows for robust PCA (seed 003 §7) and the DCT (seed 003 §10).

RPCA: the jitted inexact ALM (``rpca_admm`` with a fixed 50 iterations: tol=0) against the same algorithm written
in numpy below (there is no standard RPCA library, so the peer is "numpy (same algorithm)"). DCT-II (ortho, last
axis, float32) against ``scipy.fft.dct``, and the 2-D 8x8 block DCT of a 1024x1024 image against
``scipy.fft.dctn`` on the same blocked array [128, 128, 8, 8].
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import scipy.fft

from benchmarks.classical_parts import common
from research.classical import dct, rpca

_RPCA_ITERS = 50


def _numpy_rpca(D: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
  """Inexact ALM (Lin, Chen & Ma 2010) in numpy with the §7.2 penalty rule, as ``rpca_admm`` (fixed iterations)."""
  m, n = D.shape
  lam = 1.0 / np.sqrt(max(m, n))
  norm_two = np.linalg.norm(D, 2)
  norm_fro = np.linalg.norm(D)
  mu = 1.25 / norm_two
  mu_max = mu * 1e7
  Y = D / max(norm_two, np.abs(D).max() / lam)
  L = np.zeros_like(D)
  S = np.zeros_like(D)
  for _ in range(iters):
    S_new = np.sign(D - L + Y / mu) * np.maximum(np.abs(D - L + Y / mu) - lam / mu, 0)
    U, s, Vt = np.linalg.svd(D - S_new + Y / mu, full_matrices=False)
    L_new = (U * np.maximum(s - 1.0 / mu, 0)) @ Vt
    Y = Y + mu * (D - L_new - S_new)
    change = mu * max(np.linalg.norm(L_new - L), np.linalg.norm(S_new - S)) * norm_two / norm_fro
    mu = min(mu_max, mu * (1.5 if change < 1e-2 else 1.0))
    L, S = L_new, S_new
  return L, S


def _planted(m: int, n: int, rank: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  L0 = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n))
  S0 = np.where(rng.random((m, n)) < 0.05, rng.uniform(-50, 50, (m, n)), 0.0)
  return (L0 + S0).astype(np.float32)


def rows(repeats: int = 5) -> list[dict]:
  """Benchmark rows (see the module docstring); each op at a small and a large size."""
  out = []
  solve = jax.jit(functools.partial(rpca.rpca_admm, max_iter=_RPCA_ITERS, tol=0.0))
  for m, n, r in ((200, 200, 10), (1000, 1000, 20)):
    D = _planted(m, n, r)
    reps = repeats if m <= 200 else max(1, min(repeats, 2))
    jax_ms = common.median_ms(lambda: solve(D).L, repeats=reps)
    peer_ms = common.median_ms(lambda: _numpy_rpca(D, _RPCA_ITERS), repeats=reps, warmup=0 if m > 200 else 1)
    out.append(common.row("rpca_admm", f"{m}x{n} rank {r}, {_RPCA_ITERS} iters, f32", "numpy (same algorithm)",
                          jax_ms, peer_ms))

  rng = np.random.default_rng(1)
  dct_last = jax.jit(functools.partial(dct.dct, type=2, norm="ortho"))
  for shape in ((1024, 256), (64, 65536)):
    x = rng.normal(size=shape).astype(np.float32)
    jax_ms = common.median_ms(lambda: dct_last(x), repeats=repeats)
    peer_ms = common.median_ms(lambda: scipy.fft.dct(x, 2, norm="ortho"), repeats=repeats)
    out.append(common.row("dct type 2 ortho, last axis", f"{shape[0]}x{shape[1]} f32", "scipy.fft.dct",
                          jax_ms, peer_ms))

  block_dct = jax.jit(functools.partial(dct.dctn, type=2, axes=(-2, -1), norm="ortho"))
  for size in (256, 1024):
    img = rng.uniform(0, 255, (size, size)).astype(np.float32)
    blocks = np.ascontiguousarray(img.reshape(size // 8, 8, size // 8, 8).transpose(0, 2, 1, 3))
    jax_ms = common.median_ms(lambda: block_dct(blocks), repeats=repeats)
    peer_ms = common.median_ms(lambda: scipy.fft.dctn(blocks, 2, axes=(-2, -1), norm="ortho"), repeats=repeats)
    out.append(common.row("dctn 8x8 blocks ortho", f"{size}x{size} image f32", "scipy.fft.dctn", jax_ms, peer_ms))
  return out
