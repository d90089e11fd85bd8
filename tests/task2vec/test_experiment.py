"""End to end: the smoke flagfile (CLI), probe reuse on re-run, bad input, cifar100-shaped data via mock_data."""

import dataclasses
import json
import os
import subprocess
import sys

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.methods.task2vec import experiment, tasks
from research.methods.task2vec import probe as probe_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "task2vec_smoke.flags")


def _cli(*args, timeout=600):
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("RESEARCH_TEST_XLA_FLAGS", "")  # the CLI as a user runs it: the real device count
  return subprocess.run([sys.executable, "-m", "experiments.task2vec", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_smoke_flagfile_end_to_end(tmp_path):
  work = tmp_path / "smoke"
  r = _cli(f"--flagfile={SMOKE}", f"--workdir={work}")
  assert r.returncode == 0, r.stderr[-3000:]
  for f in ("embeddings.npz", "distances.csv", "summary.json", "distance_heatmap.png", "topk_taxonomy.png",
            "norm_vs_error.png", "alpha_sweep.png"):
    assert (work / f).stat().st_size > 0, f
  s = json.loads((work / "summary.json").read_text())
  for k in ("spearman_taxonomy", "spearman_taxonomy_domain", "norm_vs_error_spearman", "model_selection",
            "timings_seconds"):
    assert k in s
  assert {"rho", "p_value"} <= set(s["spearman_taxonomy"])
  rel = s["model_selection"]["relative_error_increase"]
  assert {"task2vec_symmetric", "task2vec_asymmetric_alpha0.15", "generic_probe", "chance", "oracle"} <= set(rel)
  # The table against its own errors matrix (rounded to 4 decimals in the summary; selection_table itself is
  # checked on hand-made numbers in test_tasks_probe.py).
  ms = s["model_selection"]
  errors, generic = np.array(ms["errors"]), np.array(ms["generic_errors"])
  cols = np.arange(errors.shape[1])
  assert generic.shape == (errors.shape[1],) and len(ms["choices"]["symmetric"]) == errors.shape[1]
  np.testing.assert_allclose(errors[ms["choices"]["oracle"], cols], errors.min(0), atol=1e-4)
  for key, want in [("oracle", errors.min(0).mean()), ("chance", errors.mean()), ("generic_probe", generic.mean()),
                    ("task2vec_symmetric", errors[ms["choices"]["symmetric"], cols].mean())]:
    assert ms["mean_error"][key] == pytest.approx(want, abs=1e-4), key
  assert ms["oracle_error"] == pytest.approx(errors.min(0).mean(), abs=1e-4)
  z = np.load(work / "embeddings.npz")
  assert z["hessian"].shape == (len(z["task_names"]), s["embedding_dim"])
  assert int(z["filters_per_layer"].sum()) == s["embedding_dim"] and len(z["layers"]) == len(z["filters_per_layer"])
  assert np.all(np.isfinite(z["hessian"])) and np.all(z["hessian"] >= 0)
  meta = json.loads(str(z["meta"][0]))
  assert meta["method"] == "montecarlo" and meta["estimator"] == "per_example"
  csv_text = (work / "distances.csv").read_text()
  for d in ("cosine", "normalized_cosine", "correlation", "kl", "jsd", "domain_cosine", "taxonomic"):
    assert f"distance={d}," in csv_text
  assert not list(work.glob("*.tmp"))


@pytest.mark.parametrize("flag,message", [
    ("--distances=cosine,euclid", "unknown distance"),
    ("--probe=resnet9000", "unknown probe"),
    ("--start_stage=7", "start_stage"),
    # builds the task suite before it can tell (8 s): under -m slow (suite time)
    pytest.param("--fisher_batch_size=200", "fewer than one Fisher batch", marks=pytest.mark.slow),
    ("--dataset=no_such_dataset_xyz", "no_such_dataset_xyz"),
])
def test_bad_flags_fail_cleanly_before_writing(tmp_path, flag, message):
  work = tmp_path / "bad"
  r = _cli(f"--flagfile={SMOKE}", f"--workdir={work}", flag, timeout=300)
  assert r.returncode == 1
  err = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
  assert len(err) == 1 and message in err[0], r.stderr[-2000:]
  assert not work.exists()


def test_probe_training_is_reused_on_rerun_fast(tmp_path):
  """Fast variant of the test below: the same reuse / resume contract with the smallest registered network."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, 16)
  cfg = probe_lib.ProbeTrainConfig(probe="wrn10_1", num_steps=2, batch_size=8, warmup_steps=0)
  args = (images, labels, 3, (0.5,) * 3, (0.25,) * 3, str(tmp_path))
  _, v1, info1 = probe_lib.train_probe(cfg, *args, progress=False)
  _, v2, info2 = probe_lib.train_probe(cfg, *args, progress=False)
  assert info1["trained_steps"] == 2 and info2["trained_steps"] == 0 and info2["resumed_from_step"] == 2
  assert info2["final_train_loss"] == info1["final_train_loss"]
  chex.assert_trees_all_equal(v1, v2)
  with pytest.raises(ValueError, match="different settings"):
    probe_lib.train_probe(dataclasses.replace(cfg, num_steps=3), *args, progress=False)


@pytest.mark.slow  # ~50 s of XLA compilation on 2 CPU cores
def test_probe_is_reused_on_rerun(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, 32)
  cfg = probe_lib.ProbeTrainConfig(probe="cifar_resnet18_w4", num_steps=3, batch_size=8, warmup_steps=0)
  _, v1, info1 = probe_lib.train_probe(cfg, images, labels, 3, (0.5,) * 3, (0.25,) * 3, str(tmp_path), progress=False)
  _, v2, info2 = probe_lib.train_probe(cfg, images, labels, 3, (0.5,) * 3, (0.25,) * 3, str(tmp_path), progress=False)
  assert info1["trained_steps"] == 3 and info2["trained_steps"] == 0 and info2["resumed_from_step"] == 3
  chex.assert_trees_all_close(v1, v2)
  with pytest.raises(ValueError, match="different settings"):
    probe_lib.train_probe(dataclasses.replace(cfg, num_steps=4), images, labels, 3, (0.5,) * 3, (0.25,) * 3,
                          str(tmp_path), progress=False)


class _Source:
  """A random-access source of cifar100-shaped examples with a consistent fine -> coarse map (f // 5)."""

  def __init__(self, n, seed):
    rng = np.random.default_rng(seed)
    self.label = np.arange(n) % 100
    self.images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)

  def __len__(self):
    return len(self.label)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": int(self.label[i]), "coarse_label": int(self.label[i] // 5)}

  def __getitems__(self, idx):
    return [self[i] for i in idx]


def _mock_cifar100():
  def as_data_source_fn(builder, split, **kwargs):
    del builder, kwargs
    return _Source(400 if split == "train" else 200, 0 if split == "train" else 1)
  return tfds.testing.mock_data(num_examples=400, as_data_source_fn=as_data_source_fn)


def _c100_cfg(**kw):
  suite = tasks.SuiteConfig(num_random=1, num_supers=2, relabel_coarse=1, ladder_bases=1, ladder_samples=(2,),
                            target_samples=2, max_families=3)
  base = dict(dataset="cifar100", data_dir="/nonexistent/tfds", probe="cifar_resnet18_w4", probe_steps=2,
              probe_batch_size=8, train_per_class=4, test_per_class=2, max_samples=32, fisher_batch_size=8,
              expert_steps=2, expert_batch_size=8, transfer_head_steps=5, suite=suite, plots=False)
  return experiment.Task2VecConfig(**{**base, **kw})


def test_cifar100_mock_data_pipeline():
  with _mock_cifar100():
    d = experiment.prepare_data(_c100_cfg())
  assert d["spec"].num_coarse_classes == 20
  tax = d["tax"]
  assert tax.coarse_to_group is None and tax.num_fine == 100
  np.testing.assert_array_equal(tax.fine_to_coarse, np.arange(100) // 5)
  names = [t.name for t in d["suite"]["tasks"]]
  assert "family/c0" in names and "super/s0/fine" in names and "super/s0/coarse" in names
  assert tax.task_distance(d["all_specs"]["family/c0"], d["all_specs"]["family/c1"]) == 2.0


def test_cifar100_mock_bad_inputs(tmp_path):
  with _mock_cifar100():
    with pytest.raises(ValueError, match="fewer than one Fisher batch"):
      experiment.prepare_data(_c100_cfg(fisher_batch_size=64))
  with tfds.testing.mock_data(num_examples=8):
    with pytest.raises(ValueError, match="coarse_label"):
      experiment.run(_c100_cfg(dataset="mnist"), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_cifar100_mock_end_to_end(tmp_path):
  with _mock_cifar100():
    s = experiment.run(_c100_cfg(), str(tmp_path / "c100"))
  assert s["dataset"] == "cifar100" and np.isfinite(s["embedding_dim"])
  assert (tmp_path / "c100" / "embeddings.npz").exists()
