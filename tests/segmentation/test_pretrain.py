"""research.train.pretrain: a classification checkpoint's backbone goes into segmentation models (plain and wrapped
with CRF-as-RNN, where the backbone sub-tree is nested) and mismatches are one clear error."""

import chex
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from research import models
from research.train import pretrain
from research.train import segmentation as S


def _classifier_checkpoint(path, width):
  cls = models.create("resnet18", width=width, num_classes=7)
  v = jax.jit(lambda r: cls.init(r, jnp.zeros((1, 32, 32, 3)), train=False))(jax.random.key(5))
  v = jax.tree.map(lambda a: a + 0.5, v)  # recognisable values
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / "10" / "state", {"params": v["params"], "model_state": {"batch_stats": v["batch_stats"]}})
  return v


@pytest.mark.parametrize("crf", ["none", "crf_rnn"])
def test_segmenter_backbone_from_a_classification_checkpoint(tmp_path, crf):
  v = _classifier_checkpoint(tmp_path / "ckpts", width=8)
  cfg = S.SegmentationConfig(model="fcn", backbone_width=8, image_size=32, crf=crf)
  net = S.make_model(cfg, 4)
  init = jax.eval_shape(lambda r: net.init(r, jnp.zeros((1, 32, 32, 3)), train=False), jax.random.key(0))
  fresh = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), init)
  params, state = pretrain.load_backbone(fresh["params"], {"batch_stats": fresh["batch_stats"]},
                                         str(tmp_path / "ckpts"))
  backbone = params["segmenter"]["backbone"] if crf == "crf_rnn" else params["backbone"]
  stats = state["batch_stats"]["segmenter"]["backbone"] if crf == "crf_rnn" else state["batch_stats"]["backbone"]
  chex.assert_trees_all_close(backbone, {k: a for k, a in v["params"].items() if k != "head"})
  chex.assert_trees_all_close(stats, v["batch_stats"])
  head = params["segmenter"] if crf == "crf_rnn" else params
  assert all(float(jnp.abs(a).max()) == 0 for k, t in head.items() if k != "backbone" for a in jax.tree.leaves(t))


def test_width_mismatch_names_the_flag(tmp_path):
  _classifier_checkpoint(tmp_path / "ckpts", width=8)
  net = S.make_model(S.SegmentationConfig(model="fcn", backbone_width=16, image_size=32), 4)
  init = jax.eval_shape(lambda r: net.init(r, jnp.zeros((1, 32, 32, 3)), train=False), jax.random.key(0))
  with pytest.raises(ValueError, match="--backbone_checkpoint=.*another shape.*same --backbone and width"):
    pretrain.load_backbone(init["params"], {"batch_stats": init["batch_stats"]}, str(tmp_path / "ckpts"))
  with pytest.raises(ValueError, match="--pretrain_steps=-1"):
    S.validate(S.SegmentationConfig(pretrain_steps=-1))


def test_run_name():
  assert pretrain.run_name("resnet18", 16, 1500, 0) == "resnet18_w16_1500steps_seed0"
  assert pretrain.run_name("drn_c_26", 16, 100, 1) == "drn_c_26_100steps_seed1"


def _segmenter_checkpoint(path, cfg):
  net = S.make_model(cfg, 4)
  v = jax.jit(lambda r: net.init(r, jnp.zeros((1, 32, 32, 3)), train=False))(jax.random.key(3))
  v = jax.tree.map(lambda a: a + 0.25, v)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / "20" / "state", {"params": v["params"], "model_state": {"batch_stats": v["batch_stats"]}})
  return v


def test_crf_rnn_starts_from_a_trained_fcn(tmp_path):
  """--init_checkpoint: the whole FCN (backbone + head + BN statistics) goes under CRF-as-RNN's ``segmenter``;
  the CRF's own parameters keep their initialisation."""
  base = S.SegmentationConfig(model="fcn", backbone_width=8, image_size=32)
  v = _segmenter_checkpoint(tmp_path / "fcn", base)
  net = S.make_model(S.SegmentationConfig(model="fcn", backbone_width=8, image_size=32, crf="crf_rnn"), 4)
  init = jax.jit(lambda r: net.init(r, jnp.zeros((1, 32, 32, 3)), train=False))(jax.random.key(0))
  params, state = pretrain.load_network(init["params"], {"batch_stats": init["batch_stats"]}, str(tmp_path / "fcn"))
  chex.assert_trees_all_close(params["segmenter"], v["params"])
  chex.assert_trees_all_close(state["batch_stats"]["segmenter"], v["batch_stats"])
  chex.assert_trees_all_close(params["crf_rnn"], init["params"]["crf_rnn"])
  # the plain FCN loads at the root
  plain = S.make_model(base, 4)
  init2 = jax.jit(lambda r: plain.init(r, jnp.zeros((1, 32, 32, 3)), train=False))(jax.random.key(1))
  p2, _ = pretrain.load_network(init2["params"], {"batch_stats": init2["batch_stats"]}, str(tmp_path / "fcn"))
  chex.assert_trees_all_close(p2, v["params"])
  # another width: one error naming the flag
  wide = S.make_model(S.SegmentationConfig(model="fcn", backbone_width=16, image_size=32), 4)
  init3 = jax.eval_shape(lambda r: wide.init(r, jnp.zeros((1, 32, 32, 3)), train=False), jax.random.key(0))
  with pytest.raises(ValueError, match="--init_checkpoint=.*no sub-tree.*same --model"):
    pretrain.load_network(init3["params"], {"batch_stats": init3["batch_stats"]}, str(tmp_path / "fcn"))
