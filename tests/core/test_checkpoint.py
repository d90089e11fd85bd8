"""Checkpoints: resume gives bit-identical parameters; a corrupt latest checkpoint falls back with a warning."""

import json
import os

import jax
import numpy as np
import pytest

from research.train import classify
from research.train.checkpoint import Checkpointer


def _cfg(data_dir, **kw):
  base = dict(model="wrn10_1", dataset="shapes", data_dir=data_dir, num_steps=6, batch_size=8, eval_batch_size=1000,
              learning_rate=0.05, warmup_steps=1, eval_every=6, checkpoint_every=3, log_every=1, progress_bar=False)
  base.update(kw)
  return classify.ClassifyConfig(**base)


@pytest.mark.slow  # default run: test_classify_cli's SIGKILL test and test_loop's resume tests cover this
def test_resume_is_bit_identical(shapes_data_dir, tmp_path):
  """In-process kill-and-resume: drop the final checkpoint and rerun the same command."""
  straight = classify.train_and_evaluate(_cfg(shapes_data_dir), str(tmp_path / "a"))
  workdir = str(tmp_path / "b")
  classify.train_and_evaluate(_cfg(shapes_data_dir), workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  import shutil
  shutil.rmtree(os.path.join(ckpt_dir, "6"))  # as if killed between step 3's and step 6's checkpoints
  os.remove(os.path.join(workdir, "results.json"))
  resumed = classify.train_and_evaluate(_cfg(shapes_data_dir), workdir)
  assert resumed["resumed_from_step"] == 3 and resumed["steps_run"] == 3
  assert resumed["params_sha256"] == straight["params_sha256"]
  assert resumed["eval_accuracy"] == straight["eval_accuracy"]
  assert resumed["final_train_loss"] == straight["final_train_loss"]
  # The metrics log has each step once, as in the uninterrupted run.
  steps_logged = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  straight_logged = [json.loads(l)["step"] for l in open(tmp_path / "a" / "metrics.jsonl")]
  assert steps_logged == straight_logged


def _corrupt_largest_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    f.truncate(os.path.getsize(target) // 3)
  return target


def test_corrupt_latest_checkpoint_falls_back(tmp_path):
  state = {"w": np.arange(4096, dtype=np.float32), "step": np.int32(0)}
  ck = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=5, async_save=False)
  for step in (1, 2):
    ck.save(step, jax.tree.map(lambda x: x + step, state))
  ck.wait()
  _corrupt_largest_file(str(tmp_path / "ckpt" / "2"))
  ck2 = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=5, async_save=False)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)
  with pytest.warns(RuntimeWarning, match="step 2 .* could not be restored"):
    restored, step = ck2.restore_latest(abstract)
  assert step == 1
  np.testing.assert_array_equal(restored["w"], state["w"] + 1)
  ck.close()
  ck2.close()


def test_all_checkpoints_corrupt_is_an_error(tmp_path):
  state = {"w": np.arange(4096, dtype=np.float32)}
  ck = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ck.save(1, state)
  ck.wait()
  _corrupt_largest_file(str(tmp_path / "ckpt" / "1"))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="none of the checkpoints"):
    Checkpointer(str(tmp_path / "ckpt"), async_save=False).restore_latest(abstract)
