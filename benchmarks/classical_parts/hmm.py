"""HMM forward–backward and Viterbi (research.classical.hmm, seed 003 §3.2) vs hmmlearn, and vs dynamax.

Peers: hmmlearn ``CategoricalHMM.predict_proba`` / ``decode(algorithm="viterbi")`` (C++, float64, log space) on a
model with fixed parameters; dynamax ``hidden_markov_model.hmm_smoother`` (JAX) on the same log-emission matrix,
run in the interpreter of its own venv (``dynamax_python``: it needs tfp-nightly, so it cannot share this venv),
timed inside that subprocess with the same protocol (jitted, one warm-up call, median of ``repeats``, blocked on).
The JAX timing includes the gather ``log_B[:, obs]``, as hmmlearn's includes its emission lookup. Each row also
carries ``max_abs_diff`` of the posteriors (or the number of differing Viterbi states) against the peer. Without
``dynamax_python`` (or if its subprocess fails) the dynamax rows are left out and a note is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.classical_parts import common
from research.classical import hmm

SIZES = ((4, 8, 1_000), (32, 16, 100_000))  # (S states, M symbols, T steps)

_DYNAMAX_SCRIPT = r"""
import json, sys, time
import numpy as np
import jax, jax.numpy as jnp
from dynamax.hidden_markov_model import hmm_smoother
d = np.load(sys.argv[1])
repeats = int(sys.argv[2])
args = tuple(jnp.asarray(d[k], jnp.float32) for k in ("pi", "A", "log_e"))
fn = jax.jit(lambda pi, A, le: hmm_smoother(pi, A, le).smoothed_probs)  # its jit traces compute_trans_probs
jax.block_until_ready(fn(*args))
times = []
for _ in range(repeats):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  times.append((time.perf_counter() - t0) * 1e3)
times.sort()
print(json.dumps({"ms": times[len(times) // 2], "max_abs_diff": float(np.abs(np.asarray(out) - d["ref"]).max()),
                  "version": __import__("dynamax").__version__}))
"""


def _model(seed: int, s: int, m: int, t: int):
  rng = np.random.default_rng(seed)
  pi = rng.dirichlet(np.ones(s))
  A = rng.dirichlet(np.ones(s), s) + np.eye(s) * 2.0  # sticky chains, as in practice
  A /= A.sum(1, keepdims=True)
  B = rng.dirichlet(np.ones(m) * 0.5, s)
  obs = rng.integers(0, m, t)
  return pi, A, B, obs


def _dynamax(python: str, pi, A, log_e, ref, repeats: int) -> dict:
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "inputs.npz")
    np.savez(path, pi=pi, A=A, log_e=log_e, ref=ref)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([python, "-c", _DYNAMAX_SCRIPT, path, str(repeats)], capture_output=True, text=True,
                          env=env, timeout=1800)
  if proc.returncode != 0:
    errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln and not ln.startswith(" ")]
    raise RuntimeError(errors[-1] if errors else f"rc {proc.returncode}: {proc.stderr.strip()[-300:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def rows(repeats: int = 5, dynamax_python: Optional[str] = None) -> list[dict]:
  """Forward–backward posteriors and Viterbi at two sizes vs hmmlearn (and forward–backward vs dynamax)."""
  from hmmlearn.hmm import CategoricalHMM

  fb_fn = jax.jit(lambda lp, la, lb, o: hmm.forward_backward(lp, la, lb[:, o].T, compute_trans_counts=False)
                  .posteriors)
  fbx_fn = jax.jit(lambda lp, la, le: hmm.forward_backward(lp, la, le, compute_trans_counts=True).posteriors)
  vt_fn = jax.jit(lambda lp, la, lb, o: hmm.viterbi(lp, la, lb[:, o].T).path)
  out = []
  for s, m, t in SIZES:
    pi, A, B, obs = _model(0, s, m, t)
    size = f"S={s},M={m},T={t}"
    ref = CategoricalHMM(n_components=s, n_features=m)
    ref.startprob_, ref.transmat_, ref.emissionprob_ = pi, A, B
    x = obs[:, None]
    args = tuple(jnp.asarray(v, jnp.float32) for v in (np.log(pi), np.log(A), np.log(B))) + (jnp.asarray(obs),)

    post = np.asarray(fb_fn(*args))
    ref_post = ref.predict_proba(x)
    jax_ms = common.median_ms(lambda: fb_fn(*args), repeats)
    peer_ms = common.median_ms(lambda: ref.predict_proba(x), repeats)
    out.append(common.row("hmm forward_backward", size, "hmmlearn predict_proba", jax_ms, peer_ms,
                          max_abs_diff=float(np.abs(post - ref_post).max()), dtype="float32 vs float64"))

    path = np.asarray(vt_fn(*args))
    ref_path = ref.decode(x, algorithm="viterbi")[1]
    jax_ms_v = common.median_ms(lambda: vt_fn(*args), repeats)
    peer_ms_v = common.median_ms(lambda: ref.decode(x, algorithm="viterbi"), repeats)
    out.append(common.row("hmm viterbi", size, "hmmlearn decode(viterbi)", jax_ms_v, peer_ms_v,
                          states_differing=int(np.sum(path != ref_path)), dtype="float32 vs float64"))

    if dynamax_python:
      try:
        log_e = np.log(B)[:, obs].T.astype(np.float32)
        dyn = _dynamax(dynamax_python, pi.astype(np.float32), A.astype(np.float32), log_e, post, repeats)
        # dynamax's hmm_smoother also computes the expected transitions (its flag cannot be switched off under its
        # jit), so the JAX side does too here; both get the precomputed log-emission matrix.
        le = jnp.asarray(log_e)
        jax_ms_x = common.median_ms(lambda: fbx_fn(args[0], args[1], le), repeats)
        out.append(common.row("hmm forward_backward+trans", size, f"dynamax {dyn['version']} hmm_smoother",
                              jax_ms_x, dyn["ms"], max_abs_diff=dyn["max_abs_diff"], dtype="float32 vs float32"))
      except Exception as e:  # noqa: BLE001 - a failing peer must not lose the other rows
        print(f"  note: dynamax row {size} skipped: subprocess failed: {type(e).__name__}: {e}", flush=True)
    elif s == SIZES[0][0]:
      print("  note: dynamax rows skipped: no dynamax_python given (dynamax needs its own venv)", flush=True)
  return out
