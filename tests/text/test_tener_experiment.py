"""TENER experiment (research.methods.tener_experiment, experiments.tener): the driver on the loop with a mock TFDS
conll2003, finished runs reused, bad flags -> one clear error naming the flag, the smoke flagfile end to end; the
tagging task's eval and the ESuLMO language model."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.methods import tener_experiment as te
from research.models.sequence.esulmo import SubwordBiLM
from research.train import tagging
from tests.generative.flag_checks import check_flag_error
from tests.text.test_ner_data import _conll_records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "tener_smoke.flags")
TINY = dict(num_steps=2, batch_size=4, warmup_steps=1, d_model=8, num_heads=2, num_layers=1, ff_dim=8, word_dim=4,
            char_dim=4, char_heads=2, char_ff_dim=4, lstm_hidden=4, eval_batch_size=4, min_word_count=1)


def test_driver_on_mock_conll2003_and_reuse(tmp_path):
  """The whole driver (load, vocabularies, loop, entity-F1 eval, summary) on a user's conll2003 (mock_data)."""
  recs = _conll_records()
  cfg = te.TENERConfig(dataset="conll2003", data_dir=str(tmp_path / "tfds"), variants=("tener",), seeds=(0,),
                       **TINY)
  with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kw: recs[split],
                              data_dir=str(tmp_path / "tfds")):
    summary = te.run(cfg, str(tmp_path / "out"))
    assert summary["num_sentences"] == {"train": 8, "validation": 1, "test": 1}
    row = summary["table"]["tener"]
    assert 0.0 <= row["test_f1"][0] <= 1.0 and np.isfinite(row["dev_f1"][0])
    assert (tmp_path / "out" / "summary.md").exists()
    results = json.loads((tmp_path / "out" / "tener_seed0" / "results.json").read_text())
    assert results["step"] == 2 and "eval_test_f1_MISC" in results
    mtime = os.path.getmtime(tmp_path / "out" / "tener_seed0" / "results.json")
    again = te.run(cfg, str(tmp_path / "out"))  # the finished run is reused, not trained again
  assert os.path.getmtime(tmp_path / "out" / "tener_seed0" / "results.json") == mtime
  assert again["runs"] == summary["runs"]


def test_eval_metrics_are_conlleval_entity_f1():
  task = tagging.TaggingTask(model_kwargs={"vocab_size": 5}, tag_names=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"))
  tags = np.array([[1, 2, 0, 3], [3, 0, 0, 0], [1, 0, 0, 0]])
  pred = np.array([[1, 2, 0, 1], [3, 0, 0, 0], [2, 0, 0, 0]])  # a wrong type; a stray I- (= B-PER) in row 2
  out = task.eval_metrics({"sentences": np.float32(2)}, {
      "pred": pred, "tags": tags, "length": np.array([4, 1, 1]), "role": np.array([0, 1, 0]),
      "valid": np.array([1.0, 1.0, 1.0]), "unseen": np.array([[0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], bool)})
  assert out["dev_precision"] == pytest.approx(2 / 3) and out["dev_recall"] == pytest.approx(2 / 3)
  assert out["test_f1"] == 1.0 and out["dev_unseen_recall"] == 0.5 and out["dev_f1_LOC"] == 0.0


@pytest.mark.parametrize("args,message", [
    (["--variants=tener,crf"], "--variant"),
    (["--variants=tener,tener"], "--variants lists a variant twice"),
    (["--num_steps=0"], "--num_steps must be positive"),
    (["--d_model=30", "--num_heads=4"], "--d_model=30 must be a multiple of --num_heads=4"),
    (["--d_model=12", "--num_heads=4"], "with an even quotient"),
    (["--dropout=1.5"], "--dropout must lie in [0, 1)"),
    (["--seeds=1,1"], "--seeds must list distinct seeds"),
    (["--max_len=-1"], "--max_len must be >= 0"),
])
def test_bad_flags_are_one_clear_error(args, message):
  check_flag_error("tener", args, message)


def test_bad_dataset_is_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match="grammar_ner"):
    te.load_data(te.TENERConfig(dataset="no_such_ner", data_dir=str(tmp_path), **TINY))
  with pytest.raises(ValueError, match="--batch_size=65 exceeds the 64 training sentences"):
    te.load_data(te.TENERConfig(dataset="grammar_ner/small", data_dir=str(tmp_path), **{**TINY, "batch_size": 65}))


def test_subword_bilm_loss_and_pooling_match_numpy():
  lm = SubwordBiLM(vocab_size=7, embed_dim=4, hidden=3)
  ids = jnp.array([[3, 4, 5, 2, 0], [6, 1, 0, 0, 0]])
  word_index = jnp.array([[0, 0, 1, 2, 2], [0, 1, -1, -1, -1]])  # the padded subword's word index is ignored
  word_index = jnp.where(ids > 0, word_index, -1)
  v = lm.init(jax.random.key(0), ids, method="loss")
  hf, hb = lm.apply(v, ids)
  w, b = (np.asarray(v["params"]["softmax"][k], np.float64) for k in ("kernel", "bias"))
  total, count = 0.0, 0
  for r in range(2):
    n = int((ids[r] > 0).sum())
    for i in range(n):
      for h, j in ((hf, i + 1), (hb, i - 1)):
        if 0 <= j < n:
          z = np.asarray(h[r, i], np.float64) @ w + b
          total -= z[int(ids[r, j])] - np.log(np.exp(z).sum())
          count += 1
  got_t, got_c = lm.apply(v, ids, method="loss")
  assert float(got_c) == count and float(got_t) == pytest.approx(total, rel=1e-5)
  feats = np.asarray(lm.apply(v, ids, word_index, 4, method="word_features"))
  h = np.concatenate([np.asarray(hf), np.asarray(hb)], -1)
  np.testing.assert_allclose(feats[0, 0], h[0, :2].mean(0), rtol=1e-5)
  np.testing.assert_allclose(feats[0, 2], h[0, 3], rtol=1e-5)  # its second subword is padding
  assert (feats[1, 2:] == 0).all() and feats.shape == (2, 4, 6)
  # the backward LSTM starts at each sentence's last real subword: padding changes nothing
  np.testing.assert_allclose(np.asarray(lm.apply(v, ids[1:, :2])[1])[0], np.asarray(hb)[1, :2], rtol=1e-5, atol=1e-7)


def _run(*args, timeout=900):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "experiments.tener", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_smoke_flagfile_in_process(tmp_path):
  """The smoke flagfile's settings (parsed by absl from the file) through the driver: TENER + ESuLMO (BPE, subword
  language model, per-word features, TENER) on grammar_ner/small; every metric finite."""
  from absl import flags
  from experiments import tener as exp
  fv = flags.FlagValues()
  exp.define_flags(fv)
  fv(["prog", f"--flagfile={SMOKE}"])
  cfg = exp.config_from_flags(fv)
  cfg = dataclasses.replace(cfg, data_dir=str(tmp_path / "tfds"))
  summary = te.run(cfg, str(tmp_path / "out"))
  assert set(summary["table"]) == {"tener_esulmo"}
  for row in summary["table"].values():
    assert all(np.isfinite(v[0]) for v in row.values())
  assert summary["esulmo"]["seed0"]["num_merges"] == 50 and np.isfinite(summary["esulmo"]["seed0"]["lm_dev_perplexity"])


@pytest.mark.slow
def test_cli_smoke_flagfile(tmp_path):
  """The smoke flagfile end to end through the CLI."""
  proc = _run(f"--flagfile={SMOKE}", f"--workdir={tmp_path / 'out'}", f"--data_dir={tmp_path / 'tfds'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert set(summary["table"]) == {"tener_esulmo"}


@pytest.mark.slow
def test_cli_bad_flag_is_one_clear_error(tmp_path):
  proc = _run("--variants=tener,nope", f"--workdir={tmp_path}", timeout=300)
  assert proc.returncode != 0
  assert "variant" in proc.stderr and "Traceback" not in proc.stderr
