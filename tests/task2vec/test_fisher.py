"""FIM estimators against closed forms on a linear-softmax probe; invariances; data parallelism; variational."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.methods.task2vec import distances as dist_lib
from research.methods.task2vec.fisher import FisherConfig, FisherEmbedder, HeadConfig, fit_head
from research.train import steps

D, C, KP = 3, 4, 4  # input dim, probe filters, padded classes


class LinearTail(nn.Module):
  """A 1x1 conv on [N,1,1,D] inputs (C filters) + BN: the smallest 'probe tail' with the embedding's layer types."""
  use_bn: bool = False

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(C, (1, 1), use_bias=False, name="conv")(x)
    if self.use_bn:
      y = nn.BatchNorm(use_running_average=True, name="bn")(y)
    return jnp.mean(y, axis=(1, 2))


def _tail(use_bn=False, seed=0):
  m = LinearTail(use_bn)
  v = m.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1, 1, D)))
  return (lambda tv, x: m.apply(tv, x)), {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def _data(n=32, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 1, 1, D)).astype(np.float32)
  return x


def _head(seed=1):
  rng = np.random.default_rng(seed)
  return {"kernel": jnp.asarray(rng.normal(size=(C, KP)), jnp.float32),
          "bias": jnp.asarray(rng.normal(size=(KP,)) * 0.3, jnp.float32)}


def closed_form_fisher(w, head, x, num_classes):
  """Exact F_diag of the conv kernel [D, C], filter-averaged over D: E_x Σ_y p_y (x_d (H(e_y - p))_c)^2."""
  x = x.reshape(len(x), D)
  h = np.asarray(head["kernel"])[:, :num_classes]
  logits = (x @ w) @ h + np.asarray(head["bias"])[:num_classes]
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  f = np.zeros((D, C))
  for i in range(len(x)):
    for y in range(num_classes):
      g = np.outer(x[i], h @ (np.eye(num_classes)[y] - p[i]))
      f += p[i, y] * g ** 2
  return (f / len(x)).mean(0)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_per_example_mc_converges_to_closed_form(num_classes):
  apply_tail, tv = _tail()
  x = _data(128)
  emb = FisherEmbedder(apply_tail, tv, num_classes_pad=KP,
                       fisher=FisherConfig(estimator="per_example", epochs=50, batch_size=128))
  labels = np.arange(128) % num_classes
  head = _head()
  e = emb.embed(jax.random.PRNGKey(0), x, labels, np.zeros((128, C), np.float32), head=head)
  exact = closed_form_fisher(np.asarray(tv["params"]["conv"]["kernel"]).reshape(D, C), head, x, num_classes)
  chex.assert_shape(e.hessian, (C,))
  np.testing.assert_allclose(e.hessian, exact, rtol=0.08)
  assert e.meta["estimator"] == "per_example"


def test_batch_estimator_is_per_example_over_batch_size():
  apply_tail, tv = _tail()
  x = _data(32)
  head = _head()
  exact = closed_form_fisher(np.asarray(tv["params"]["conv"]["kernel"]).reshape(D, C), head, x, 3)
  emb = FisherEmbedder(apply_tail, tv, num_classes_pad=KP, fisher=FisherConfig(estimator="batch", epochs=200,
                                                                              batch_size=8))
  e = emb.embed(jax.random.PRNGKey(1), x, np.arange(32) % 3, np.zeros((32, C), np.float32), head=head)
  assert e.meta["estimator"] == "batch"
  # 800 squared batch gradients (relative std of the total ~4 %): total within 15 %, each filter within 25 %
  np.testing.assert_allclose(e.hessian.sum(), exact.sum() / 8, rtol=0.15)
  np.testing.assert_allclose(e.hessian, exact / 8, rtol=0.25)
  # and it is clearly not the per-example value
  assert np.all(e.hessian < exact / 3)


def test_device_count_does_not_change_the_embedding():
  apply_tail, tv = _tail(use_bn=True)
  x = _data(64, seed=3)
  labels = np.arange(64) % 3
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    for est in ("per_example", "batch"):
      emb = FisherEmbedder(apply_tail, tv, num_classes_pad=KP, mesh=steps.make_mesh(devices),
                           fisher=FisherConfig(estimator=est, epochs=2, batch_size=16))
      out.append(emb.embed(jax.random.PRNGKey(2), x, labels, np.zeros((64, C), np.float32), head=_head()).hessian)
  assert len(jax.devices()) == 4
  chex.assert_trees_all_close(out[0], out[2], rtol=1e-4)
  chex.assert_trees_all_close(out[1], out[3], rtol=1e-4)
  chex.assert_shape(out[0], (C + C,))  # conv filters + BN gammas


def _clusters(n, k, seed):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(k, D)) * 3
  y = np.arange(n) % k
  x = (centers[y] + rng.normal(size=(n, D))).astype(np.float32)
  return x.reshape(n, 1, 1, D), y


def _feats(tv, x):
  return np.asarray(x.reshape(len(x), D) @ np.asarray(tv["params"]["conv"]["kernel"]).reshape(D, C))


def test_label_permutation_invariance_and_dimension():
  apply_tail, tv = _tail()
  x, y = _clusters(128, 4, 0)
  head_cfg = HeadConfig(learning_rate=1e-2, epochs=10, min_steps=200)
  emb = FisherEmbedder(apply_tail, tv, num_classes_pad=8, head=head_cfg,
                       fisher=FisherConfig(epochs=4, batch_size=32))
  key = jax.random.PRNGKey(0)
  a = emb.embed(key, x, y, _feats(tv, x))
  perm = np.array([2, 0, 3, 1])
  b = emb.embed(key, x, perm[y], _feats(tv, x))
  c = emb.embed(jax.random.PRNGKey(7), x, y, _feats(tv, x))  # MC noise level: same task, other key
  d_perm, d_noise = dist_lib.cosine(a, b), dist_lib.cosine(a, c)
  assert d_perm <= 3 * d_noise + 1e-4, (d_perm, d_noise)
  # a different task (other clusters) is farther than the permuted one
  x2, y2 = _clusters(128, 4, 5)
  other = emb.embed(key, x2, y2, _feats(tv, x2))
  assert dist_lib.cosine(a, other) > d_perm
  # two classes vs four: same dimension
  two = emb.embed(key, x[:96], y[:96] % 2, _feats(tv, x[:96]))
  chex.assert_equal_shape([a.hessian, two.hessian])
  assert a.hessian.shape == (emb.dim,)
  assert emb._mc._cache_size() == 1  # every task (4 or 2 classes, 128 or 96 samples) reuses one trace


def test_random_labels_give_small_norm():
  apply_tail, tv = _tail()
  x, y = _clusters(256, 4, 1)
  emb = FisherEmbedder(apply_tail, tv, num_classes_pad=KP, head=HeadConfig(learning_rate=1e-2, min_steps=300),
                       fisher=FisherConfig(epochs=2, batch_size=32))
  real = emb.embed(jax.random.PRNGKey(0), x, y, _feats(tv, x))
  rand = emb.embed(jax.random.PRNGKey(0), x, np.random.default_rng(0).permutation(y), _feats(tv, x))
  assert np.linalg.norm(rand.hessian) < 0.3 * np.linalg.norm(real.hessian)


def test_fit_head_is_traced_once_and_class_balanced():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(100, 5)).astype(np.float32)
  y = np.zeros(100, np.int32)
  y[:5] = 1  # 95:5 imbalance; balanced sampling still learns class 1
  x[:5] += 4.0
  from research.methods.task2vec import fisher
  before = fisher._fit_head._cache_size()
  h1 = fit_head(jax.random.PRNGKey(0), x, y, 4, HeadConfig(learning_rate=1e-2, min_steps=300))
  h2 = fit_head(jax.random.PRNGKey(1), x + 0.1, y, 4, HeadConfig(learning_rate=1e-2, min_steps=300))
  assert fisher._fit_head._cache_size() - before <= 1
  pred = np.argmax(x @ np.asarray(h1["kernel"]) + np.asarray(h1["bias"]), -1)
  assert pred[:5].mean() > 0.8 and (pred[5:] == 0).mean() > 0.8
  chex.assert_shape([h1["kernel"], h2["kernel"]], (5, 4))


def test_variational_fisher():
  apply_tail, tv = _tail(use_bn=True)
  x, y = _clusters(64, 3, 2)
  emb = FisherEmbedder(apply_tail, tv, num_classes_pad=KP, head=HeadConfig(learning_rate=1e-2, min_steps=200),
                       fisher=FisherConfig(method="variational", epochs=20, batch_size=32))
  e = emb.embed(jax.random.PRNGKey(0), x, y, _feats(tv, x))
  assert emb._var._cache_size() == 1  # 40 steps, one trace
  chex.assert_shape([e.hessian, e.scale], (2 * C,))
  assert np.all(np.isfinite(e.hessian)) and np.all(e.hessian > 0) and np.all(e.scale > 0)
  # the log-variances moved from their initialisation (exp(8) precision) during the optimisation
  assert not np.allclose(e.hessian, np.exp(8.0), rtol=1e-3)
  assert e.meta["method"] == "variational" and np.isfinite(e.meta["final_ce"])


def test_bad_inputs():
  apply_tail, tv = _tail()
  emb = FisherEmbedder(apply_tail, tv, num_classes_pad=KP, fisher=FisherConfig(batch_size=32))
  x = _data(32)
  with pytest.raises(ValueError, match="two classes"):
    emb.embed(jax.random.PRNGKey(0), x, np.zeros(32, np.int32), np.zeros((32, C), np.float32))
  with pytest.raises(ValueError, match="fewer than one Fisher batch"):
    emb.embed(jax.random.PRNGKey(0), x[:16], np.arange(16) % 2, np.zeros((16, C), np.float32))
  with pytest.raises(ValueError, match="num_classes_pad"):
    emb.embed(jax.random.PRNGKey(0), x, np.arange(32) % 6, np.zeros((32, C), np.float32))
  with pytest.raises(ValueError, match="unknown Fisher method"):
    FisherConfig(method="exact").validate()
