"""``experiments.rnn_cells``: the copy/recall data generator, the task's eval arithmetic, the retain-gate
initialisation, the parallel SRU layer against the SRU cell in the generic scan, the smoke flagfile through the
library (and the reuse of finished runs), and bad flags as one clear error."""

from __future__ import annotations

import dataclasses
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from tests.generative.flag_checks import check_flag_error

from research.layers import recurrent as rec
from research.models.sequence import recall_rnn
from research.train import sequence_memory as sm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "rnn_cells_smoke.flags")


# ------------------------------------------------------------------------------------------------------- data


def test_copy_recall_layout_targets_and_seeding():
  kw = dict(delay=6, num_symbols=3, alphabet=4, distractors=5)
  d = sm.copy_recall(4000, rng=np.random.default_rng(0), **kw)
  tok, tgt = d["tokens"], d["targets"]
  assert tok.shape == (4000, 3 + 6 + 1) and tgt.shape == (4000, 3)
  assert tok.dtype == np.int32 and tgt.dtype == np.int32
  np.testing.assert_array_equal(tok[:, :3], tgt)  # the targets are the first k tokens
  assert tgt.min() == 0 and tgt.max() == 3  # symbols: the whole alphabet [0, 4)
  assert tok[:, 3:9].min() == 4 and tok[:, 3:9].max() == 8  # distractors: [4, 9), never a symbol
  assert np.all(tok[:, -1] == 9) and sm.vocab_size(4, 5) == 10  # the RECALL marker, last id
  # uniform symbols, distractors independent of them (chance = 1 / alphabet for any guess from the distractors)
  np.testing.assert_allclose(np.bincount(tgt.ravel(), minlength=4) / tgt.size, 0.25, atol=0.02)
  same = np.mean((tok[:, 3] - 4) % 4 == tgt[:, 0])
  assert abs(same - 0.25) < 0.03
  # seeded: same generator seed -> same data; another seed -> other data
  np.testing.assert_array_equal(sm.copy_recall(4000, rng=np.random.default_rng(0), **kw)["tokens"], tok)
  assert not np.array_equal(sm.copy_recall(4000, rng=np.random.default_rng(1), **kw)["tokens"], tok)
  with pytest.raises(ValueError, match="alphabet=1 must be >= 2"):
    sm.copy_recall(3, rng=np.random.default_rng(0), **{**kw, "alphabet": 1})


def test_experiment_data_is_seeded_per_delay_and_split():
  from research.methods import rnn_cells_experiment as exp
  cfg = exp.RNNCellsConfig(num_train=40, num_eval=20, eval_batch_size=10, delays=(5, 7))
  tr, ev = exp.make_data(cfg, 5, 0)
  tr2, _ = exp.make_data(cfg, 5, 0)
  np.testing.assert_array_equal(tr["tokens"], tr2["tokens"])
  assert tr["tokens"].shape == (40, cfg.num_symbols + 5 + 1) and ev["tokens"].shape == (20, cfg.num_symbols + 5 + 1)
  assert not np.array_equal(tr["tokens"][:20], ev["tokens"])  # held-out set from its own generator
  assert not np.array_equal(exp.make_data(cfg, 5, 1)[0]["tokens"], tr["tokens"])


def test_eval_sums_count_symbols_and_whole_recalls():
  """Fake logits: row 0 all right, row 1 one of two symbols right, row 2 wrong, row 3 padding (valid 0)."""
  task = sm.SequenceMemoryTask(alphabet=4, distractors=2, num_symbols=2, features=4)
  targets = np.array([[1, 2], [3, 0], [2, 2], [1, 1]], np.int32)
  pred = np.array([[1, 2], [3, 1], [0, 0], [0, 0]])
  logits = jax.nn.one_hot(pred, 4) * 5.0
  task._logits = lambda params, batch: logits
  state = type("S", (), {"params": None})()
  batch = {"targets": jnp.asarray(targets), "valid": jnp.asarray([1.0, 1.0, 1.0, 0.0])}
  sums, _ = task.eval_step(state, batch)
  m = task.eval_metrics(jax.tree.map(np.asarray, sums), None)
  assert m["examples"] == 3
  np.testing.assert_allclose(m["accuracy"], (1.0 + 0.5 + 0.0) / 3)
  np.testing.assert_allclose(m["sequence_accuracy"], 1 / 3)
  ce = lambda z, y: float(jax.nn.logsumexp(z) - z[y])  # noqa: E731
  want = np.mean([np.mean([ce(logits[i, j], targets[i, j]) for j in range(2)]) for i in range(3)])
  np.testing.assert_allclose(m["loss"], want, rtol=1e-6)


# -------------------------------------------------------------------------------------------------- model


def test_retain_gate_bias_lands_on_the_retain_gate():
  b, u, f = 2.5, 1.5, 3
  tokens = jnp.zeros((1, 4), jnp.int32)
  models = {cell: recall_rnn.RecallRNN(cell, f, vocab_size=5, num_outputs=2, num_classes=3, forget_bias=b,
                                       update_bias=u) for cell in recall_rnn.CELLS}
  params = jax.jit(lambda k: {c: m.init(k, tokens)["params"]["layer0"]["cell"] for c, m in models.items()})(
      jax.random.key(0))
  want = {"elman": np.zeros(f), "lstm": np.r_[np.zeros(f), b * np.ones(f), np.zeros(2 * f)],
          "gru": np.r_[np.zeros(f), u * np.ones(f), np.zeros(f)], "sru": np.r_[u * np.ones(f), np.zeros(f)]}
  want["lstm_peephole"] = want["lstm"]
  for cell, p in params.items():
    np.testing.assert_array_equal(np.asarray(p["input_bias"]), want[cell])
  np.testing.assert_array_equal(np.asarray(params["gru"]["recurrent_bias"]), 0.0)
  # what the bias means: with zero weights a GRU state decays by exactly sigmoid(b) per step (n = tanh(0) = 0)
  cell = rec.GRUCell(f, bias_init=recall_rnn.block_bias_init(f, 3, 1, b), kernel_init=jax.nn.initializers.zeros,
                     recurrent_kernel_init=jax.nn.initializers.zeros)
  h = jnp.ones((1, f))
  v = jax.jit(cell.init)(jax.random.key(0), h, jnp.zeros((1, 2)))
  new_h = jax.jit(cell.apply)(v, h, jnp.zeros((1, 2)))[0]
  np.testing.assert_allclose(np.asarray(new_h), 1 / (1 + np.exp(-b)), rtol=1e-6)
  with pytest.raises(ValueError, match="--cells: unknown cell 'rnn'"):
    recall_rnn.cell_layer("rnn", 4)


def test_parallel_sru_layer_equals_sru_cell_in_scan():
  """Same initial parameters, outputs, final carries and gradients (masked, both directions, given carries), with
  the identity highway (D == F) and the projected one (D != F)."""
  rng = np.random.default_rng(0)
  b, t, f = 3, 7, 4
  mask = jnp.arange(t)[None] < jnp.asarray([7, 4, 1])[:, None]
  c0 = (jnp.asarray(rng.normal(size=(b, f)), jnp.float32), jnp.asarray(rng.normal(size=(b, f)), jnp.float32))
  cases = []
  for d in (4, 6):
    x = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    for reverse in (False, True):
      ref, par = rec.RNN(rec.SRUCell, f, reverse=reverse), rec.SRU(f, reverse=reverse)
      v_ref, v_par = jax.jit(lambda k, x, ref=ref, par=par: (ref.init(k, x), par.init(k, x)))(jax.random.key(3), x)
      chex.assert_trees_all_equal(v_ref, v_par)
      cases.append((ref, par, v_ref, x))

  def loss(layer, v, x, c0):
    y, (c, h) = layer.apply(v, x, c0, mask=mask)
    return jnp.sum(y * jnp.sin(jnp.arange(f))) + jnp.sum(c ** 2) + jnp.sum(h), y

  @jax.jit
  def both(vs, xs, c0):
    return [[jax.value_and_grad(lambda *a, m=m: loss(m, *a), argnums=(0, 1, 2), has_aux=True)(v, x, c0)
             for m in (ref, par)] for (ref, par, _, _), v, x in zip(cases, vs, xs)]

  for (l1, g1), (l2, g2) in both([c[2] for c in cases], [c[3] for c in cases], c0):
    chex.assert_trees_all_close(l1, l2, atol=1e-5)  # loss and outputs y
    chex.assert_trees_all_close(g1, g2, atol=1e-5)
  with pytest.raises(ValueError, match=r"mask must be bool \[B, T\]"):
    jax.eval_shape(rec.SRU(f).init, jax.random.key(0), cases[0][3], mask=jnp.ones((b, t + 1), bool))


# ---------------------------------------------------------------------------------------------- experiment


def _smoke_config(**overrides):
  from experiments import rnn_cells as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", f"--flagfile={SMOKE}"])
  return dataclasses.replace(exp.config_from_flags(fv), **overrides)


def test_smoke_flagfile_runs_through_the_library(tmp_path):
  from research.methods import rnn_cells_experiment as exp
  cfg = _smoke_config()
  work = str(tmp_path / "run")
  summary = exp.run(cfg, work)
  assert set(summary["table"]) == set(cfg.cells)
  for cell, by_delay in summary["table"].items():
    assert set(by_delay) == {str(d) for d in cfg.delays}
    for row in by_delay.values():
      assert 0.0 <= row["accuracy"][0] <= 1.0 and 0.0 <= row["sequence_accuracy"][0] <= row["accuracy"][0]
      assert np.isfinite(row["loss"][0])
  assert summary["speed"]["lstm"]["ratio_to_lstm"] == 1.0
  assert {"sru", "sru_cell_in_scan"} <= set(summary["speed"])
  assert all(v["ms_per_step"] > 0 for v in summary["speed"].values())
  assert {"elman_fails_longest", "gated_solve_longest", "gated_beat_elman_longest", "sru_faster_than_lstm"} <= set(
      summary["claims"])
  for name in ("summary.json", "summary.md", "accuracy_vs_delay.png"):
    assert os.path.exists(os.path.join(work, name))
  run_dir = os.path.join(work, f"lstm_T{cfg.delays[0]}_seed0")
  results = json.load(open(os.path.join(run_dir, "results.json")))
  assert results["step"] == cfg.num_steps and "eval_accuracy" in results
  again = exp.run(dataclasses.replace(cfg, speed=False), work)  # finished runs are reused, not trained again
  assert again["table"] == summary["table"]


@pytest.mark.parametrize("args,message", [
    (["--cells=lstm,rnn"], "--cells"),
    (["--cells=lstm,lstm"], "--cells must list distinct cells"),
    (["--delays=0,10"], "--delays must list distinct positive lengths"),
    (["--delays=a"], "--delays must be integers"),
    (["--hidden=0"], "--hidden must be positive"),
    (["--alphabet=1"], "--alphabet=1 must be >= 2"),
    (["--solved_accuracy=1.5"], "--solved_accuracy=1.5 must lie in (0, 1]"),
    (["--num_eval=10", "--eval_batch_size=20"], "--eval_batch_size=20 exceeds --num_eval=10"),
    (["--seeds=0,0"], "--seeds must list distinct seeds"),
])
def test_bad_flags_are_one_clear_error(args, message):
  check_flag_error("rnn_cells", args, message)
