"""TENER (Yan et al. 2019): relative attention vs a float64 numpy loop over (t, j) from Eq. 16-19, direction
awareness, masking, un-scaled vs scaled, the character encoder, the CRF / softmax tagger heads, jit retracing."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.layers import attention as attn
from research.models.sequence import tener
from research.ops import sequence as seq_ops


# ------------------------------------------------------------------------------------------ numpy references


def _np_sinusoid(p, dim):
  """Eq. 17 / Vaswani §3.5, written out element by element in float64."""
  out = np.zeros(dim)
  for i in range(dim // 2):
    c = 10000.0 ** (-2.0 * i / dim)
    out[2 * i], out[2 * i + 1] = np.sin(p * c), np.cos(p * c)
  return out


def _np_softmax_masked(z, mask):
  z = np.where(mask, z, -np.inf)
  e = np.exp(z - z.max())
  return e / e.sum()


def _np_attention(x, mask, p, heads, *, relative, scaled, key_projection):
  """Loops over heads h, targets t, contexts j: TENER Eq. 16-19 (relative) or Vaswani (vanilla), then W_o."""
  t_len, d = x.shape
  dk = d // heads
  out = np.zeros((t_len, heads, dk))
  weights = np.zeros((heads, t_len, t_len))
  for h in range(heads):
    wq, wv = p["query"]["kernel"][:, h], p["value"]["kernel"][:, h]  # [D, d_k]
    q, v_ = x @ wq, x @ wv
    k = x @ p["key"]["kernel"][:, h] if key_projection else x[:, h * dk:(h + 1) * dk]  # Eq. 16: K = H_{d_k}
    for t in range(t_len):
      a = np.zeros(t_len)
      for j in range(t_len):
        if relative:
          r = _np_sinusoid(t - j, dk)  # R_{t-j}
          u, vb = p["u"][h], p["v"][h]
          a[j] = q[t] @ k[j] + q[t] @ r + u @ k[j] + vb @ r  # Eq. 18
        else:
          a[j] = q[t] @ k[j]
        if scaled:
          a[j] /= np.sqrt(dk)
      w = _np_softmax_masked(a, mask) if mask.any() else np.full(t_len, 1.0 / t_len)
      weights[h, t] = w
      out[t, h] = w @ v_  # Eq. 19
  return out.reshape(t_len, d) @ p["out"]["kernel"].reshape(d, d) + p["out"]["bias"], weights


def _to_np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ------------------------------------------------------------------------------------------ attention layer


def test_sinusoid_matches_numpy_and_relative_encoding_indexing():
  with jax.enable_x64(True):
    pos = np.array([-7.0, -1.0, 0.0, 3.0, 40.0])
    got = np.asarray(attn.sinusoid(pos, 8, jnp.float64))
    np.testing.assert_allclose(got, np.stack([_np_sinusoid(p, 8) for p in pos]), rtol=1e-12, atol=1e-14)
    r = np.asarray(attn.relative_position_encoding(5, 6, jnp.float64))
    chex.assert_shape(r, (5, 5, 6))
    for t in range(5):
      for j in range(5):
        np.testing.assert_allclose(r[t, j], _np_sinusoid(t - j, 6), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(attn.absolute_position_encoding(5, 6, jnp.float64)), r[:, 0], atol=1e-14)
  with pytest.raises(ValueError, match="even"):
    attn.sinusoid(np.arange(3), 5)


@pytest.mark.parametrize("relative,scaled,key_projection", [(True, False, False), (True, True, True),
                                                            (False, True, True)])
def test_self_attention_matches_float64_loop_over_pairs(relative, scaled, key_projection):
  """The layer (batched einsums, (Q+u).K + (Q+v).R) equals the paper's per-(t, j) equations, padding included."""
  b, t, d, heads = 2, 6, 8, 2
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, t, d))
  mask = np.ones((b, t), bool)
  mask[1, 4:] = False
  layer = attn.MultiHeadSelfAttention(heads, relative=relative, scaled=scaled, key_projection=key_projection,
                                      dtype=jnp.float64, param_dtype=jnp.float64)
  with jax.enable_x64(True):
    params = layer.init(jax.random.key(1), jnp.asarray(x), jnp.asarray(mask))["params"]
    if relative:  # non-trivial biases
      params = {**params, "u": jnp.asarray(rng.normal(size=(heads, d // heads))),
                "v": jnp.asarray(rng.normal(size=(heads, d // heads)))}
    y, inter = layer.apply({"params": params}, jnp.asarray(x), jnp.asarray(mask), mutable=["intermediates"])
    w = np.asarray(inter["intermediates"]["attention_weights"][0])
  p = _to_np(params)
  assert ("key" in p) == key_projection and ("u" in p) == relative
  for i in range(b):
    want, want_w = _np_attention(x[i], mask[i], p, heads, relative=relative, scaled=scaled,
                                 key_projection=key_projection)
    np.testing.assert_allclose(np.asarray(y[i])[mask[i]], want[mask[i]], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(w[i][:, mask[i]], want_w[:, mask[i]], rtol=1e-9, atol=1e-12)
  assert np.all(w[1][:, :, 4:] == 0.0)  # padded keys: exactly zero weight


def test_direction_awareness_relative_vs_vanilla_sinusoids():
  """TENER §3.2.2: PE_t.PE_{t+k} = PE_t.PE_{t-k} (vanilla sinusoids know distance, not direction) while R_{t-j}
  changes under t-j -> j-t, so v.R_{t-j} (and Q_t.R_{t-j}) differ for a context word on the left / right."""
  dim = 16
  pe = np.asarray(attn.absolute_position_encoding(40, dim))
  for t, k in ((10, 1), (20, 3), (25, 7)):
    np.testing.assert_allclose(pe[t] @ pe[t + k], pe[t] @ pe[t - k], rtol=1e-5)
  rng = np.random.default_rng(3)
  v = rng.normal(size=dim)
  r = np.asarray(attn.sinusoid(np.arange(-6, 7), dim))  # offsets -6..6
  for k in range(1, 7):
    np.testing.assert_allclose(r[6 + k][1::2], r[6 - k][1::2], rtol=1e-6)  # cos parts even ...
    np.testing.assert_allclose(r[6 + k][0::2], -r[6 - k][0::2], rtol=1e-5, atol=1e-7)  # ... sin parts odd
    assert abs(v @ r[6 + k] - v @ r[6 - k]) > 1e-3  # the score is not symmetric in the sign
  # In the layer: identical left and right neighbours get different weights under relative attention, the same
  # weights under position-free vanilla attention.
  x = np.zeros((1, 5, 8), np.float32)
  x[0, [1, 3]] = rng.normal(size=8)
  x[0, 2] = rng.normal(size=8)
  for relative, same in ((True, False), (False, True)):
    layer = attn.MultiHeadSelfAttention(2, relative=relative, scaled=not relative, key_projection=not relative)
    v0 = layer.init(jax.random.key(0), jnp.asarray(x))
    if relative:
      v0 = {"params": {**v0["params"], "v": jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)}}
    _, inter = layer.apply(v0, jnp.asarray(x), mutable=["intermediates"])
    w = np.asarray(inter["intermediates"]["attention_weights"][0])[0]  # [H, T, T]
    assert np.allclose(w[:, 2, 1], w[:, 2, 3], rtol=1e-6) == same


def test_unscaled_is_scaled_times_sqrt_dk():
  """§3.2.3: with the same parameters the un-scaled logits are sqrt(d_k) times the scaled ones (sharper)."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 12))
  lw = {}
  for scaled in (False, True):
    layer = attn.MultiHeadSelfAttention(3, relative=True, scaled=scaled)
    params = layer.init(jax.random.key(1), x)
    _, inter = layer.apply(params, x, mutable=["intermediates"])
    lw[scaled] = np.log(np.asarray(inter["intermediates"]["attention_weights"][0], np.float64))
  diff = lambda a: a - a[..., :1]  # logits up to the softmax's per-row constant
  np.testing.assert_allclose(diff(lw[False]), np.sqrt(4.0) * diff(lw[True]), rtol=2e-4, atol=2e-4)
  ent = lambda lg: -np.sum(np.exp(lg) * lg, -1).mean()
  assert ent(lw[False]) < ent(lw[True])


@pytest.mark.parametrize("relative", [True, False])
def test_encoder_padding_does_not_change_real_outputs(relative):
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  mask = jnp.array([[True] * 6, [True] * 3 + [False] * 3])
  enc = attn.TransformerEncoder(1, 2, 16, relative=relative, scaled=not relative, key_projection=not relative)
  v = enc.init(jax.random.key(1), x, mask)
  y = enc.apply(v, x, mask)
  x2 = x.at[1, 3:].set(100.0 * jax.random.normal(jax.random.key(2), (3, 8)))
  y2 = enc.apply(v, x2, mask)
  chex.assert_trees_all_close(y[:, :3], y2[:, :3], atol=1e-5)
  chex.assert_trees_all_close(y[0], y2[0], atol=1e-6)
  assert np.all(np.asarray(y2[1, 3:]) == 0.0)
  # a shorter sequence padded gives the outputs of the unpadded sequence (relative positions only depend on t - j;
  # absolute positions start at 0 either way)
  y_short = enc.apply(v, x[1:, :3], mask[1:, :3])
  chex.assert_trees_all_close(y[1, :3], y_short[0], atol=1e-5)


def test_bad_attention_inputs():
  x = jnp.zeros((1, 3, 6))
  with pytest.raises(ValueError, match="multiple of num_heads"):
    attn.MultiHeadSelfAttention(4).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="even head width"):
    attn.MultiHeadSelfAttention(2).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="mask must be"):
    attn.MultiHeadSelfAttention(3).init(jax.random.key(0), jnp.zeros((1, 3, 6)), jnp.ones((1, 4), bool))


# ------------------------------------------------------------------------------------------ tagger


def _batch(seed=0, b=3, t=7, c=5):
  rng = np.random.default_rng(seed)
  lengths = np.array([t, 4, 1])[:b]
  words = np.zeros((b, t), np.int32)
  chars = np.zeros((b, t, c), np.int32)
  for i, n in enumerate(lengths):
    words[i, :n] = rng.integers(1, 20, n)
    for j in range(n):
      chars[i, j, :rng.integers(1, c + 1)] = rng.integers(1, 12)
  tags = np.where(words > 0, rng.integers(0, 9, (b, t)), 0).astype(np.int32)
  return jnp.asarray(words), jnp.asarray(chars), jnp.asarray(tags), jnp.asarray(words > 0)


def test_char_encoder_max_pools_over_real_characters():
  _, chars, _, _ = _batch()
  enc = tener.CharTransformerEncoder(12, char_dim=8, num_heads=2, ff_dim=8)
  v = enc.init(jax.random.key(0), chars)
  out, inter = enc.apply(v, chars, capture_intermediates=True)
  chex.assert_shape(out, (3, 7, 8))
  per_char = np.asarray(inter["intermediates"]["encoder"]["__call__"][0]).reshape(3, 7, 5, 8)
  c = np.asarray(chars)
  for i in range(3):
    for j in range(7):
      real = c[i, j] > 0
      want = per_char[i, j][real].max(0) if real.any() else np.zeros(8)
      np.testing.assert_allclose(np.asarray(out[i, j]), want, rtol=1e-6)


@pytest.mark.parametrize("name", ["tener", "transformer_ner", "bilstm_crf"])
def test_tagger_heads_use_the_crf_ops_and_softmax(name):
  words, chars, tags, mask = _batch()
  m = models.create(name, num_tags=9, vocab_size=20, char_vocab_size=12, d_model=16, num_heads=2, num_layers=1,
                    ff_dim=32, word_dim=8, char_dim=8, char_heads=2, char_ff_dim=8, lstm_hidden=8)
  v = m.init(jax.random.key(0), words, chars=chars)
  p = v["params"]
  assert set(p) >= {"word_embed", "char_encoder", "out_fc", "crf"}
  char_att = p["char_encoder"]["encoder"]["layer0"]["attention"]
  if name == "tener":  # Eq. 16-18: no W_k, biases u and v; un-scaled (§3.2.3); the characters too
    att = p["transformer"]["layer0"]["attention"]
    assert {"u", "v"} <= set(att) and "key" not in att and "u" in char_att
    assert m.bind(v).context.scaled is False and m.bind(v).context.relative is True
  elif name == "transformer_ner":  # Vaswani: W_k, scaled, absolute positions
    att = p["transformer"]["layer0"]["attention"]
    assert "key" in att and "u" not in att and "key" in char_att
    assert m.bind(v).context.scaled is True and m.bind(v).context.relative is False
  crf = v["params"]["crf"]
  crf = {k: jax.random.normal(jax.random.key(i), a.shape) for i, (k, a) in enumerate(crf.items())}
  v = {"params": {**v["params"], "crf": crf}}
  e = m.apply(v, words, chars=chars)
  chex.assert_shape(e, (3, 7, 9))
  nll = m.apply(v, words, tags, chars=chars, method="nll")
  want = -seq_ops.crf_log_likelihood(e, tags, mask, crf["transitions"], crf["start"], crf["end"])
  chex.assert_trees_all_close(nll, want, rtol=1e-5)
  dec = m.apply(v, words, chars=chars, method="decode")
  chex.assert_trees_all_equal(dec, seq_ops.crf_viterbi_decode(e, mask, crf["transitions"], crf["start"],
                                                               crf["end"])[0])
  if name != "tener":
    return
  # padded words do not change real emissions
  chars2 = chars.at[1, 5, :2].set(3)  # characters of a padded word
  chex.assert_trees_all_close(m.apply(v, words, chars=chars2, mask=mask)[mask], e[mask], atol=1e-5)
  soft = models.create(name, num_tags=9, vocab_size=20, char_vocab_size=12, output="softmax", d_model=16,
                       num_heads=2, num_layers=1, ff_dim=32, word_dim=8, char_dim=8, char_heads=2, char_ff_dim=8,
                       lstm_hidden=8)
  vs = soft.init(jax.random.key(0), words, chars=chars)
  assert "crf" not in vs["params"]
  es = np.asarray(soft.apply(vs, words, chars=chars), np.float64)
  logp = es - np.log(np.exp(es).sum(-1, keepdims=True))
  want_nll = -(np.take_along_axis(logp, np.asarray(tags)[..., None], -1)[..., 0] * np.asarray(mask)).sum(-1)
  np.testing.assert_allclose(np.asarray(soft.apply(vs, words, tags, chars=chars, method="nll")), want_nll, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(soft.apply(vs, words, chars=chars, method="decode")),
                                np.where(np.asarray(mask), es.argmax(-1), 0))


def test_tagger_jit_does_not_retrace_and_trains():
  words, chars, tags, mask = _batch()
  m = models.create("tener", num_tags=9, vocab_size=20, char_vocab_size=12, d_model=16, num_heads=2, num_layers=1,
                    ff_dim=16, word_dim=8, char_dim=8, char_heads=2, char_ff_dim=8, dropout=0.1)
  v = m.init(jax.random.key(0), words, chars=chars)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, words, chars, tags, rng):
    def loss(p):
      return jnp.mean(m.apply({"params": p}, words, tags, chars=chars, train=True, method="nll",
                              rngs={"dropout": rng}))
    val, g = jax.value_and_grad(loss)(params)
    return jax.tree.map(lambda a, b: a - 0.05 * b, params, g), val

  p, first = v["params"], None
  for i in range(15):
    p, val = step(p, words, chars, tags, jax.random.key(i))
    first = float(val) if first is None else first
  assert np.isfinite(float(val)) and float(val) < 0.8 * first


def test_bad_tagger_settings():
  words, chars, _, _ = _batch()
  with pytest.raises(ValueError, match="encoder='gru'"):
    tener.SequenceTagger(num_tags=3, vocab_size=20, encoder="gru").init(jax.random.key(0), words)
  with pytest.raises(ValueError, match="output='hinge'"):
    tener.SequenceTagger(num_tags=3, vocab_size=20, output="hinge").init(jax.random.key(0), words)
  with pytest.raises(ValueError, match="needs chars"):
    tener.SequenceTagger(num_tags=3, vocab_size=20, char_vocab_size=5).init(jax.random.key(0), words)
