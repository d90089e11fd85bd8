"""The generic loop trains non-classification tasks (issue 10, item 5): a two-optimizer WGAN on 8 Gaussians and a
masked autoencoder of padded variable-length sequences (tests/core/generic_tasks.py).

For both: 1 device == 4 devices on the same global batches, the step compiles once, SIGKILL + resume is
bit-identical, NaN halts with a clear message keeping the last good checkpoint. Plus the GAN's alternation
(only the stepped group changes), that it learns, and that padding never reaches the autoencoder's loss or
gradients.
"""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

import generic_tasks as G
from research.train import checkpoint as ckpt_lib
from research.train import loop as loop_lib
from research.train import task as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "generic_task_script.py")
TASKS = ("gan", "autoencoder")
# Steps per task in the short runs: the GAN's cover two generator steps (0-based steps 5 and 11).
STEPS = {"gan": 12, "autoencoder": 6}


def _config(num_steps, **kw):
  return loop_lib.LoopConfig(**{"num_steps": num_steps, "eval_every": 0, "checkpoint_every": 0,
                                "progress_bar": False, "tensorboard": False, "log_every": 1000, **kw})


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


# ----------------------------------------------------------------------------------------- (a) 1 == 4 devices


@pytest.fixture(scope="module", params=TASKS)
def one_and_four(request):
  """One task object trained for a few steps on a 1-device and on a 4-device mesh (same global batches)."""
  name = request.param
  task = G.make(name)[0]
  runs = []
  for devices in (jax.devices()[:1], jax.devices()):
    _, data, eval_data = G.make(name)
    mesh = task_lib.make_mesh(devices)
    moved = []
    state, results = loop_lib.train(task, data, config=_config(STEPS[name]), mesh=mesh, workdir=None,
                                    eval_data=eval_data, on_step=lambda s, m: moved.append(float(m["l2_updates"])))
    runs.append({"mesh": mesh, "state": _host(state), "results": results, "l2_updates": moved})
  return name, task, runs


def test_one_device_equals_four_devices(one_and_four):
  """Same global batches (ArrayBatches depends on (seed, step) only) on 1 and 4 devices: same params, model
  state, optimizer state and eval metrics up to float32 reduction order. The GAN's noise travels in the batch
  ('z' from the batch's seeded generator), not from the per-device key fold_in(fold_in(rng, step), device
  index), which would give example i different noise on 1 and on 4 devices; the autoencoder normalises by the
  GLOBAL real-token count although the four shards hold different numbers of real tokens."""
  assert jax.device_count() == 4, "tests/conftest.py simulates 4 CPU devices"
  name, _, (one, four) = one_and_four
  for run, n in ((one, 1), (four, 4)):
    assert run["results"]["num_devices"] == n and run["results"]["step"] == STEPS[name]
    assert len(run["l2_updates"]) == STEPS[name] and all(u > 0 for u in run["l2_updates"])  # it trained
  s1, s4 = one["state"], four["state"]
  chex.assert_trees_all_close(s1.params, s4.params, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(s1.model_state, s4.model_state, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(s1.opt_state, s4.opt_state, rtol=1e-4, atol=1e-6)
  e1, e4 = ({k: v for k, v in r["results"].items() if k.startswith("eval_")} for r in (one, four))
  assert e1.keys() == e4.keys() and e1
  for k in e1:
    assert e1[k] == pytest.approx(e4[k], rel=1e-4, abs=1e-6), k


# ----------------------------------------------------------------------------------------- (d) compiles once


def test_step_compiles_once(one_and_four):
  """``update`` was traced once per mesh for all steps (a Python counter in ``update``), and is not traced again
  when the same task object trains again (the loop caches the compiled step per (task, mesh))."""
  name, task, (one, four) = one_and_four
  assert task.trace_count == 2
  for run in (one, four):
    assert task_lib.compiled_train_step(task, run["mesh"])._cache_size() == 1
  _, data, _ = G.make(name, seed=1)
  loop_lib.train(task, data, config=_config(3, seed=1), mesh=one["mesh"], workdir=None)
  assert task.trace_count == 2
  assert task_lib.compiled_train_step(task, one["mesh"])._cache_size() == 1


def test_autoencoder_per_device_mean_would_depend_on_device_count():
  """Why the autoencoder overrides ``update``: the base ``Task.update`` pmean-s per-device masked means, which
  differs from the global masked mean when shards hold different numbers of real tokens."""
  losses = {}
  for global_normalizer, n in ((True, 1), (True, 4), (False, 4)):
    task, data, _ = G.make("autoencoder", global_normalizer=global_normalizer)
    mesh = task_lib.make_mesh(jax.devices()[:n])
    batch = next(data)
    counts = batch["mask"].reshape(4, -1).sum(1)
    assert len(set(counts.tolist())) > 1, "the test needs shards with different token counts"
    _, state = task_lib.init_train_state(task, 0, task_lib.abstract_batch(batch), mesh)
    _, m = task_lib.compiled_train_step(task, mesh)(state, task_lib.global_batch(batch, mesh))
    losses[global_normalizer, n] = float(m["loss"])
  assert losses[True, 1] == pytest.approx(losses[True, 4], rel=1e-5)
  assert abs(losses[False, 4] - losses[True, 1]) > 1e-3 * abs(losses[True, 1]), losses


# ----------------------------------------------------------------------------------------- (e) GAN alternation


def test_gan_two_optimizers_each_step_moves_only_its_group():
  """opt_state has one entry per group; critic steps (0-based 0..4) change only the critic (weights stay in
  [-clip, clip]), the generator step (5) only the generator and its EMA."""
  task, data, _ = G.make("gan")
  mesh = task_lib.make_mesh(jax.devices()[:1])
  _, state = task_lib.init_train_state(task, 0, task_lib.abstract_batch(next(G.make("gan")[1])), mesh)
  assert set(state.opt_state) == {"generator", "critic"} == set(state.params)
  for group in ("generator", "critic"):  # each entry is that group's optax state
    expected = jax.tree.structure(task.optimizer()[group].init(state.params[group]))
    assert jax.tree.structure(state.opt_state[group]) == expected
  assert all(np.all(np.abs(np.asarray(x)) <= task.clip) for x in jax.tree.leaves(state.params["critic"]))
  step = task_lib.compiled_train_step(task, mesh)
  for t in range(task.n_critic + 1):
    before = _host(state)  # the step donates its input
    state, metrics = step(state, task_lib.global_batch(next(data), mesh))
    after = _host(state)
    stepped, frozen = ("generator", "critic") if t == task.n_critic else ("critic", "generator")
    assert float(metrics["generator_step"]) == float(stepped == "generator")
    chex.assert_trees_all_equal(before.params[frozen], after.params[frozen])
    chex.assert_trees_all_equal(before.opt_state[frozen], after.opt_state[frozen])
    # Every kernel of the stepped group moves (the critic's output bias cannot: E f(fake) - E f(real) does not
    # depend on it).
    for (path, b), a in zip(jax.tree_util.tree_leaves_with_path(before.params[stepped]),
                            jax.tree.leaves(after.params[stepped])):
      if jax.tree_util.keystr(path).endswith("['kernel']"):
        assert not np.array_equal(a, b), f"step {t}: {stepped}{jax.tree_util.keystr(path)} did not move"
    ema_moved = not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.model_state),
                                                            jax.tree.leaves(after.model_state)))
    assert ema_moved == (stepped == "generator")
    assert all(np.all(np.abs(x) <= task.clip) for x in jax.tree.leaves(after.params["critic"]))
  assert int(after.step) == task.n_critic + 1
  assert task.trace_count == 1


# ----------------------------------------------------------------------------------------- learning


def test_gan_learns_the_ring():
  """900 steps = 150 generator steps, batch 256. Measured on this CPU, seed 0: frac_near_mode 0.012 -> 0.35 (EMA
  generator 0.36), mean_sq_dist 2.28 -> 0.23, modes_covered 1 -> 8; over seeds 0-5 the worst were frac 0.11, EMA
  frac 0.12, mean_sq_dist 0.66, modes 5 (at 600 steps one seed was still at 0.06, hence 900). WGAN with clipping
  is slow and noisy; the thresholds leave a margin for numerics that change the trajectory."""
  task, data, eval_data = G.make("gan")
  mesh = task_lib.make_mesh(jax.devices()[:1])
  _, init = task_lib.init_train_state(task, 0, task_lib.abstract_batch(next(G.make("gan")[1])), mesh)
  before = loop_lib.evaluate(task, init, eval_data(), mesh)
  _, results = loop_lib.train(task, data, config=_config(900, log_every=100), mesh=mesh, workdir=None,
                              eval_data=eval_data)
  after = {k[len("eval_"):]: v for k, v in results.items() if k.startswith("eval_")}
  assert before["frac_near_mode"] < 0.03 and before["modes_covered"] <= 1, before
  assert after["frac_near_mode"] >= 0.08, (before, after)
  assert after["ema_frac_near_mode"] >= 0.08, (before, after)
  assert after["mean_sq_dist"] < 0.5 * before["mean_sq_dist"], (before, after)
  assert after["modes_covered"] >= 4, (before, after)
  assert np.isfinite(results["final_train_loss"])


def test_autoencoder_learns():
  task, data, eval_data = G.make("autoencoder")
  mesh = task_lib.make_mesh(jax.devices()[:1])
  _, init = task_lib.init_train_state(task, 0, task_lib.abstract_batch(next(G.make("autoencoder")[1])), mesh)
  before = loop_lib.evaluate(task, init, eval_data(), mesh)
  _, results = loop_lib.train(task, data, config=_config(150), mesh=mesh, workdir=None, eval_data=eval_data)
  assert results["eval_token_count"] == before["token_count"] == float(G.sequence_data(64, seed=2)["mask"].sum())
  assert results["eval_mse"] < 0.3 * before["mse"], (before, results["eval_mse"])


# ----------------------------------------------------------------------------------------- padding


def test_autoencoder_padding_never_reaches_loss_or_gradients():
  task = G.MaskedAutoencoderTask()
  batch = G.sequence_data(32, seed=3)
  batch["mask"][:, 6:] = 0  # no row is longer than 6: positions 6, 7 are padding everywhere
  # (init through the loop's helper: the same program as the other tests', a compilation-cache hit)
  _, state = task_lib.init_train_state(task, 0, task_lib.abstract_batch(batch),
                                       task_lib.make_mesh(jax.devices()[:1]))
  params = jax.tree.map(lambda x: np.asarray(x) + np.float32(0.01), state.params)  # non-zero everywhere
  model_state = state.model_state

  loss_and_grad = jax.jit(jax.value_and_grad(lambda p, b: task.loss(p, model_state, b, None, train=True)[0]))

  reference = loss_and_grad(params, batch)
  pad = batch["mask"][..., None] == 0
  rng = np.random.default_rng(0)
  for fill in (rng.normal(0, 100, batch["x"].shape), np.full(batch["x"].shape, np.nan),
               np.full(batch["x"].shape, np.inf)):
    poked = {"x": np.where(pad, fill, batch["x"]).astype(np.float32), "mask": batch["mask"]}
    chex.assert_trees_all_equal(loss_and_grad(params, poked), reference)
  loss, grads = reference
  assert np.isfinite(float(loss)) and float(loss) > 0
  for name in ("pos_in", "pos_out"):  # positions that are padding in every row get no gradient
    g = np.asarray(grads[name])
    assert np.all(g[6:] == 0) and np.any(g[:6] != 0), name


# ----------------------------------------------------------------------------------------- (c) NaN halt


@pytest.mark.parametrize("name,log_every,reported_step", [("gan", 1, 7), ("autoencoder", 100, 8)])
def test_nan_halts_with_clear_message_and_keeps_last_good_checkpoint(name, log_every, reported_step, tmp_path):
  """The update producing step 7 makes the loss NaN. The loop checks the metrics at log steps and at checkpoint
  steps (before saving): with log_every=1 it stops at step 7; with log_every=100 at the next checkpoint step
  (8) -- the message names the step where it noticed and the previous good check (6), between which the first
  non-finite step lies. Either way the checkpoints
  are 2, 4, 6: the last good one is kept and nothing at or after step 7 is written."""
  # The GAN here draws its noise from the loop's per-device key (no 'z' in the batch): that path runs too.
  task, data, eval_data = G.make(name, nan_at_step=7, noise_in_batch=False)
  with pytest.raises(FloatingPointError) as info:
    loop_lib.train(task, data, config=_config(12, checkpoint_every=2, log_every=log_every),
                   mesh=task_lib.make_mesh(jax.devices()[:1]), workdir=str(tmp_path), eval_data=eval_data)
  msg = str(info.value)
  assert "non-finite training metrics" in msg and "'loss'" in msg and "'l2_grads'" in msg, msg
  assert f"at step {reported_step}" in msg, msg
  if reported_step == 8:
    assert "first non-finite after step 6, the previous check" in msg, msg
  ckpt_dir = tmp_path / "checkpoints"
  assert str(ckpt_dir) in msg
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  assert steps == [2, 4, 6], os.listdir(ckpt_dir)
  assert not os.path.exists(tmp_path / "results.json")
  last = ckpt_lib.load_params(str(ckpt_dir))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(last["params"]))


# ----------------------------------------------------------------------------------------- (b) SIGKILL + resume


def _cmd(name, workdir, *extra):
  return [sys.executable, SCRIPT, f"--task={name}", f"--workdir={workdir}", f"--num_steps={STEPS[name]}",
          "--checkpoint_every=4", *extra]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1 " + os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))


# The GAN (two optimizers) is the harder case; the autoencoder's run is under -m slow (suite time).
@pytest.mark.parametrize("name", [n if n == "gan" else pytest.param(n, marks=pytest.mark.slow) for n in TASKS])
def test_sigkill_then_resume_is_bit_identical(name, tmp_path):
  """Killed (SIGKILL) while sleeping after step 6 -- checkpoint 4 is on disk, steps 5 and 6 are lost -- and run
  again: it resumes at 4 and ends with the same params, model state, optimizer state and key as an
  uninterrupted run (sha256 of the bytes). The victim runs first (it fills the persistent compilation cache;
  the subprocesses' XLA_FLAGS differ from this process's, which is part of the cache key), then the reference
  and the rerun side by side."""
  ref_dir, dir_ = tmp_path / "ref", tmp_path / "killed"
  os.makedirs(dir_)
  logs = {k: tmp_path / f"{k}.log" for k in ("victim", "ref", "resumed")}  # files: a full pipe would block

  def run(kind, workdir, *extra):
    with open(logs[kind], "w") as log:
      return subprocess.Popen(_cmd(name, workdir, *extra), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=log)

  procs = []
  try:
    victim = run("victim", dir_, "--sleep_after_step=6")
    procs.append(victim)
    deadline = time.time() + 120
    while not (os.path.exists(dir_ / "sleeping") and os.path.isdir(dir_ / "checkpoints" / "4")):
      assert victim.poll() is None, logs["victim"].read_text()[-3000:]
      assert time.time() < deadline, "the victim never reached step 6 with checkpoint 4 on disk"
      time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert not os.path.exists(dir_ / "results.json")
    assert sorted(d for d in os.listdir(dir_ / "checkpoints") if d.isdigit()) == ["4"]

    # The reference, and the victim's command again (it does not sleep twice) side by side.
    procs += [run("ref", ref_dir), run("resumed", dir_, "--sleep_after_step=6")]
    for kind, p in zip(("ref", "resumed"), procs[1:]):
      assert p.wait(timeout=120) == 0, logs[kind].read_text()[-3000:]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  expected = json.load(open(ref_dir / "final.json"))
  got = json.load(open(dir_ / "final.json"))
  assert got["results"]["resumed_from_step"] == 4 and got["results"]["steps_run"] == STEPS[name] - 4
  assert expected["results"]["resumed_from_step"] == 0
  for key in ("params_sha256", "model_state_sha256", "opt_state_sha256", "rng_sha256", "step_sha256"):
    assert got[key] == expected[key], key
  assert got["results"]["params_sha256"] == expected["results"]["params_sha256"]
  for k, v in expected["results"].items():
    if k.startswith("eval_"):
      assert got["results"][k] == v, k
