"""Captioning (Goel et al. 2019): caption grammar, BLEU vs sacrebleu, CIDEr-D vs the paper's formula (and
pycocoevalcap), attention vs numpy, beam search vs exhaustive enumeration, the frozen SAE, the smoke flagfile."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data import captions as captions_lib
from research.data import scenes_render as render
from research.models.sequence import captioning as cap
from research.train import caption_metrics as metrics
from research.train import captioning as cap_train
from tests.generative.flag_checks import check_flag_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "experiments", "configs", "captioning_smoke.flags")


# ------------------------------------------------------------------------------------------------- captions


def _scene_description(i, max_objects=6, size=64):
  d = render.describe(render.render_scene(render.scene_rng(77, i), size, max_objects=max_objects))
  return [{k: (float(v) if k in ("x", "y") else v) for k, v in o.items()} for o in d]


def _check_caption(caption: str, desc: list[dict]) -> None:
  """Every (size) colour class phrase names an object of the scene; colour words are colours of the scene;
  counts are the true number of objects; relations hold between the two objects they name."""
  toks = caption.split()
  n = len(desc)
  classes, colors = set(render.SHAPE_NAMES), set(render.COLOR_NAMES)
  named = []
  for p, t in enumerate(toks):
    if t in classes:
      assert p >= 1 and toks[p - 1] in colors, caption
      want = {"class": t, "color": toks[p - 1]}
      if p >= 2 and toks[p - 2] in render.SIZE_WORDS:
        want["size"] = toks[p - 2]
      matches = [k for k, o in enumerate(desc) if all(o[key] == v for key, v in want.items())]
      assert matches, (caption, want, desc)
      named.append((p, matches))
    if t in colors:
      assert t in {o["color"] for o in desc}, caption
    if t in captions_lib.NUMBER_WORDS and p + 1 < len(toks) and toks[p + 1].rstrip("s") in ("shape", "object"):
      count = captions_lib.NUMBER_WORDS.index(t)
      assert count == (n - 3 if p >= 1 and toks[p - 1] == "and" else n), caption
  for rel in ("to the left of", "to the right of", "above", "below"):
    if f" {rel} " in f" {caption} " and len(named) == 2 and len(named[0][1]) == 1 and len(named[1][1]) == 1:
      a, b = desc[named[0][1][0]], desc[named[1][1][0]]
      assert captions_lib.relation(a, b) == rel, (caption, a, b)


def test_captions_are_deterministic_distinct_and_mention_only_present_objects():
  for i in range(150):
    desc = _scene_description(i)
    caps = captions_lib.generate_captions(desc, (3, i))
    assert caps == captions_lib.generate_captions(json.dumps(desc), (3, i))  # deterministic, JSON in
    assert len(caps) == captions_lib.NUM_CAPTIONS == len(set(caps)) >= 5
    for c in caps:
      _check_caption(c, desc)
      assert c == c.lower() and "  " not in c
  other = [captions_lib.generate_captions(_scene_description(i), (4, i)) for i in range(20)]
  assert other != [captions_lib.generate_captions(_scene_description(i), (3, i)) for i in range(20)]


def test_caption_grammar_salience_counting_and_relations():
  desc = [{"class": "disc", "color": "red", "size": "small", "x": 0.8, "y": 0.5},
          {"class": "star", "color": "blue", "size": "large", "x": 0.2, "y": 0.55},
          {"class": "square", "color": "green", "size": "small", "x": 0.5, "y": 0.1}]
  assert captions_lib.salience_order(desc) == [1, 2, 0]  # large first; among the small ones the front one
  every = {captions_lib._template(t, [desc[k] for k in (1, 2, 0)], np.random.default_rng(0))
           for t in range(captions_lib.NUM_TEMPLATES)}
  joined = " | ".join(sorted(every))
  assert "there are three shapes in the picture , among them a blue star" in joined or "three objects" in joined
  assert "the biggest is a blue star" in joined or "the largest is a blue star" in joined
  assert captions_lib.relation(desc[1], desc[2]) == "below"  # dy dominates: the star is lower than the square
  assert captions_lib.relation(desc[1], desc[0]) == "to the left of"
  assert captions_lib.where(desc[2]) == "at the top" and captions_lib.noun_phrase(desc[0], False) == "a red disc"
  assert captions_lib.noun_phrase({"class": "ring", "color": "orange", "size": "small"}, False) == "an orange ring"
  with pytest.raises(ValueError, match="no objects"):
    captions_lib.generate_captions([], 0)


def test_shapes_captions_builder_and_user_dataset_loader(tmp_path):
  import tensorflow_datasets as tfds
  d = captions_lib.load_split("train", str(tmp_path), "shapes_captions/small")
  c = captions_lib.CONFIGS["small"]
  assert d["images"].shape == (c.num_train, 32, 32, 3) and d["images"].dtype == np.uint8
  assert list(d["image_ids"]) == list(range(1, c.num_train + 1))
  for i in (0, 5):  # the stored captions are the grammar's, seeded by (split seed, index)
    assert d["captions"][i] == captions_lib.generate_captions(d["descriptions"][i], (captions_lib._SEEDS["train"], i))
    assert 1 <= len(d["descriptions"][i]) <= c.max_objects
  from research.data import pipeline
  assert len(pipeline.get_source("shapes_captions/small", "validation", str(tmp_path))) == c.num_validation
  with tfds.testing.mock_data(num_examples=3):  # any TFDS dataset with image + captions runs through load_split
    m = captions_lib.load_split("validation", str(tmp_path / "mock"), "shapes_captions/small")
  assert m["images"].shape[0] == 3 and all(isinstance(x, str) for caps in m["captions"] for x in caps)


# ------------------------------------------------------------------------------------------------- metrics


def _random_corpus(seed, n=12, refs=3, vocab=5, max_len=9):
  rng = np.random.default_rng(seed)
  words = [f"w{i}" for i in range(vocab)]
  sent = lambda: [words[j] for j in rng.integers(0, vocab, rng.integers(1, max_len))]  # noqa: E731
  hyps = [sent() for _ in range(n)]
  hyps[0] = []  # an empty hypothesis
  references = [[sent() for _ in range(refs)] for _ in range(n)]
  hyps[1] = list(references[1][0])  # an exact match
  return hyps, references


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corpus_bleu_matches_sacrebleu(seed):
  sacrebleu = pytest.importorskip("sacrebleu")
  hyps, refs = _random_corpus(seed)
  ours = metrics.corpus_bleu(hyps, refs)
  # sacrebleu: the same whitespace tokens (tokenize="none"), no smoothing, references as streams, x100.
  theirs = sacrebleu.corpus_bleu([" ".join(h) for h in hyps], [[" ".join(r[k]) for r in refs] for k in range(3)],
                                 tokenize="none", smooth_method="none", force=True)
  assert ours["bleu"] > 0
  np.testing.assert_allclose(100 * ours["bleu"], theirs.score, rtol=1e-9, atol=1e-9)
  assert ours["hyp_len"] == theirs.sys_len and ours["ref_len"] == theirs.ref_len
  np.testing.assert_allclose(100 * np.asarray(ours["precisions"]), theirs.precisions, rtol=1e-9)


def test_bleu_closest_reference_length_and_edge_cases():
  assert metrics.closest_ref_length(5, [3, 7, 9]) == 3  # tie 3 / 7: the shorter
  r = metrics.corpus_bleu([["a", "b", "c", "d"]], [[["a", "b", "c", "d"], ["a"]]])
  assert r["bleu"] == pytest.approx(1.0) and r["brevity_penalty"] == 1.0
  short = metrics.corpus_bleu([["a", "b", "c", "d"]], [[["a", "b", "c", "d", "e", "f"]]])
  assert short["brevity_penalty"] == pytest.approx(math.exp(1 - 6 / 4))
  assert metrics.corpus_bleu([["x"]], [[["a", "b"]]])["bleu"] == 0.0
  with pytest.raises(TypeError, match="token lists"):
    metrics.corpus_bleu(["a b"], [[["a"]]])
  with pytest.raises(ValueError, match="2 hypotheses but 1"):
    metrics.corpus_bleu([["a"], ["b"]], [[["a"]]])


def _cider_brute_force(hyps, refs, *, normalized, sigma=6.0):
  """Vedantam et al. 2015 eq. 2-5 + CIDEr-D, with dense vectors over the vocabulary Omega of all n-grams."""
  def grams(s, n):
    return [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]
  num_images = len(refs)
  scores = []
  for hyp, rs in zip(hyps, refs):
    per_n = []
    for n in range(1, 5):
      omega = sorted({g for h in hyps for g in grams(h, n)} | {g for r_ in refs for r in r_ for g in grams(r, n)})

      def g_vec(s):
        h = np.array([grams(s, n).count(w) for w in omega], np.float64)
        tf = h / h.sum() if normalized and h.sum() > 0 else h
        df = np.array([sum(min(1, sum(grams(r, n).count(w) for r in r_)) for r_ in refs) for w in omega])
        return tf * np.log(num_images / np.maximum(1, df))
      gc = g_vec(hyp)
      total = 0.0
      for r in rs:
        gr = g_vec(r)
        denom = np.linalg.norm(gc) * np.linalg.norm(gr)
        cos = np.minimum(gc, gr) @ gr / denom if denom > 0 else 0.0
        total += math.exp(-((len(hyp) - len(r)) ** 2) / (2 * sigma ** 2)) * cos
      per_n.append(10.0 * total / len(rs))
    scores.append(np.mean(per_n))
  return float(np.mean(scores)), np.array(scores)


@pytest.mark.parametrize("term_frequency", ["count", "normalized"])
def test_cider_d_matches_the_papers_formula_by_brute_force(term_frequency):
  hyps, refs = _random_corpus(5, n=8, vocab=4)
  ours, per = metrics.cider_d(hyps, refs, term_frequency=term_frequency)
  ref, ref_per = _cider_brute_force(hyps, refs, normalized=term_frequency == "normalized")
  np.testing.assert_allclose(per, ref_per, rtol=1e-10, atol=1e-12)
  assert ours == pytest.approx(ref) and ours > 0
  # a caption equal to all its references of identical length scores 10 per order (idf > 0: unique n-grams)
  same, _ = metrics.cider_d([list("abcd"), list("efgh")], [[list("abcd")], [list("efgh")]])
  assert same == pytest.approx(10.0)


def test_cider_d_matches_pycocoevalcap():
  cider = pytest.importorskip("pycocoevalcap.cider.cider")
  hyps, refs = _random_corpus(7, n=10)
  hyps[0] = ["w1"]  # coco-caption measures length in bigrams: identical to tokens for non-empty captions only
  ours, per = metrics.cider_d(hyps, refs)
  score, theirs = cider.Cider().compute_score({i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)},
                                              {i: [" ".join(h)] for i, h in enumerate(hyps)})
  np.testing.assert_allclose(per, theirs, rtol=1e-9, atol=1e-12)
  assert ours == pytest.approx(score)


# ---------------------------------------------------------------------------------------------------- model


def _decoder(attention, k=3, **kw):
  return cap.CaptionDecoder(vocab_size=11, attention=attention, embed_dim=6, hidden_dim=8, context_dim=5, attn_dim=4,
                            num_categories=k, **kw)


def _np_attention(p, regions, mask, h, attention):
  """float64 numpy attention of one step from the decoder's parameters (module docstring equations)."""
  f = lambda name: {k: np.asarray(v, np.float64) for k, v in p[name].items()}  # noqa: E731
  vp, kp, qp, sc = f("value_proj"), f("key_proj"), f("query_proj"), f("score")
  v = regions @ vp["kernel"] + vp["bias"]  # [B, R, D]
  t = np.tanh(v @ kp["kernel"] + (h @ qp["kernel"] + qp["bias"])[:, None, :])  # [B, R, A]
  scores = t @ sc["kernel"]  # [B, R, 1 or K]
  scores = np.where(mask[..., None], scores, -np.inf)
  beta = np.exp(scores - scores.max(1, keepdims=True))
  beta /= beta.sum(1, keepdims=True)
  if attention == "soft":
    alpha = beta[..., 0]
  else:
    cat = f("category")
    logits = v @ cat["kernel"] + cat["bias"]
    s = np.exp(logits - logits.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    joint = (s * beta).sum(-1)
    alpha = joint / joint.sum(-1, keepdims=True)
  return alpha, np.einsum("br,brd->bd", alpha, v)


@pytest.mark.parametrize("attention", ["soft", "two_stream"])
def test_attention_sums_to_one_is_masked_and_matches_numpy(attention):
  rng = np.random.default_rng(0)
  regions = rng.normal(size=(3, 7, 4)).astype(np.float32)
  mask = np.ones((3, 7), bool)
  mask[1, 4:] = False
  mask[2, :2] = False
  tokens = rng.integers(0, 11, (3, 5)).astype(np.int32)
  dec = _decoder(attention)
  h = rng.normal(size=(3, 8)).astype(np.float32)
  noisy = regions.copy()
  noisy[~mask] = 100.0

  @jax.jit
  def run(key):  # one program: init, teacher forcing on clean and noisy padding, one attention step
    params = dec.init(key, regions, tokens, region_mask=mask)["params"]
    v = {"params": params}
    memory, _ = dec.apply(v, regions, mask, method=cap.CaptionDecoder.prepare)
    return (params, dec.apply(v, regions, tokens, region_mask=mask), dec.apply(v, noisy, tokens, region_mask=mask),
            dec.apply(v, memory, h, method=cap.CaptionDecoder.attend))
  params, out, out2, (z, a) = run(jax.random.key(1))
  chex.assert_shape([out["alpha"], out["context"], out["logits"]], [(3, 5, 7), (3, 5, 5), (3, 5, 11)])
  alpha = np.asarray(out["alpha"], np.float64)
  np.testing.assert_allclose(alpha.sum(-1), 1.0, atol=1e-5)
  assert (alpha[~np.broadcast_to(mask[:, None], alpha.shape)] == 0).all() and (alpha >= 0).all()
  # padded regions change nothing
  np.testing.assert_allclose(np.asarray(out2["logits"]), np.asarray(out["logits"]), rtol=1e-5, atol=1e-5)
  # one step against the float64 numpy equations
  a_np, z_np = _np_attention(params, regions.astype(np.float64), mask, h.astype(np.float64), attention)
  np.testing.assert_allclose(np.asarray(a), a_np, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(z), z_np, rtol=1e-4, atol=1e-5)
  if attention == "two_stream":
    labels = np.asarray(out["labels"])
    np.testing.assert_allclose(labels.sum(-1), 1.0, atol=1e-5)  # stream 1: a distribution over categories


def test_two_stream_with_one_category_is_soft_attention():
  rng = np.random.default_rng(1)
  regions = rng.normal(size=(2, 6, 4)).astype(np.float32)
  tokens = rng.integers(0, 11, (2, 4)).astype(np.int32)
  two = _decoder("two_stream", k=1)

  @jax.jit
  def run(key):
    params = two.init(key, regions, tokens)["params"]
    soft_params = {k: v for k, v in params.items() if k != "category"}
    return two.apply({"params": params}, regions, tokens), _decoder("soft").apply({"params": soft_params}, regions,
                                                                                   tokens)
  a, b = run(jax.random.key(0))
  chex.assert_trees_all_close(a["logits"], b["logits"], atol=1e-6)
  chex.assert_trees_all_close(a["alpha"], b["alpha"], atol=1e-6)


# ------------------------------------------------------------------------------------------------ decoding


def _toy_step(vocab=5, hidden=3, seed=0):
  """A random tanh RNN over tokens: the log-probabilities of the next token depend on the whole prefix."""
  rng = np.random.default_rng(seed)
  emb = jnp.asarray(rng.normal(size=(vocab, hidden)) * 1.5, jnp.float32)
  rec = jnp.asarray(rng.normal(size=(hidden, hidden)), jnp.float32)
  out = jnp.asarray(rng.normal(size=(hidden, vocab)) * 2.0, jnp.float32)

  def step(h, tok):
    h = jnp.tanh(emb[tok] + h @ rec)
    return h, jax.nn.log_softmax(h @ out, -1)
  return step


def _exhaustive(step, h0, *, max_len, bos, eos, allowed, alpha):
  """Best (normalised score, tokens) over every sequence: ends with <eos> at some step <= max_len, or is cut."""
  best = (-np.inf, None)
  for length in range(1, max_len + 1):
    for seq in itertools.product(allowed, repeat=length):
      if eos in seq[:-1] or (length < max_len and seq[-1] != eos):
        continue
      h, total, last = h0, 0.0, bos
      for tok in seq:
        h, lp = step(h, jnp.asarray([last]))
        total += float(lp[0, tok])
        last = tok
      score = total / len(seq) ** alpha
      if score > best[0]:
        best = (score, seq)
  return best


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_equals_exhaustive_search_on_a_tiny_vocabulary(alpha):
  pad, bos, eos = 0, 1, 2
  step = _toy_step()
  max_len, allowed = 3, (2, 3, 4)  # <eos> + two words; <pad>, <bos> forbidden
  h0 = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3)), jnp.float32)
  width = len(allowed) ** max_len
  search = jax.jit(lambda h: cap.beam_search(step, cap.tile_beams(h, width), batch_size=2, beam_width=width,
                                             max_len=max_len, bos_id=bos, eos_id=eos, pad_id=pad,
                                             length_penalty=alpha, forbidden=(pad, bos)))
  res = search(h0)
  for b in range(2):
    score, seq = _exhaustive(step, h0[b:b + 1], max_len=max_len, bos=bos, eos=eos, allowed=allowed, alpha=alpha)
    want = list(seq) + [pad] * (max_len - len(seq))
    assert np.asarray(res["tokens"][b]).tolist() == want
    assert float(res["score"][b]) == pytest.approx(score, rel=1e-5)
  assert (np.asarray(res["tokens"]) != bos).all()


def test_beam_width_one_is_greedy_and_beam_search_is_consistent():
  pad, bos, eos = 0, 1, 2
  step = _toy_step(vocab=6, seed=4)
  h0 = jnp.asarray(np.random.default_rng(5).normal(size=(4, 3)), jnp.float32)
  kw = dict(max_len=6, bos_id=bos, eos_id=eos, pad_id=pad, forbidden=(pad, bos))
  greedy, gscore = cap.greedy_search(step, h0, batch_size=4, **kw)
  beam = cap.beam_search(step, h0, batch_size=4, beam_width=1, **kw)
  np.testing.assert_array_equal(np.asarray(beam["tokens"]), np.asarray(greedy))
  np.testing.assert_allclose(np.asarray(beam["score"]), np.asarray(gscore), rtol=1e-6)
  wide = cap.beam_search(step, cap.tile_beams(h0, 4), batch_size=4, beam_width=4, **kw)
  for b in range(4):
    rows = np.asarray(wide["beams"][b])
    assert (np.asarray(wide["beam_scores"][b]) > cap.NEG / 2).all()
    assert len({tuple(r) for r in rows}) == 4  # distinct hypotheses
  for row, length in zip(np.asarray(wide["beams"]).reshape(-1, 6), np.asarray(wide["lengths"]).reshape(-1)):
    real = row[:length]
    assert (row[length:] == pad).all() and eos not in real[:-1].tolist()  # <eos> ends a hypothesis, pad after it
    assert length == 6 or real[-1] == eos
    assert not np.isin(real, [pad, bos]).any()


def test_decoder_greedy_equals_beam_one_on_the_captioner():
  rng = np.random.default_rng(2)
  regions = jnp.asarray(rng.normal(size=(3, 6, 4)), jnp.float32)
  task = cap_train.CaptioningTask(model_name="caption_two_stream", vocab_size=11, max_len=7,
                                  model_kwargs=dict(embed_dim=6, hidden_dim=8, context_dim=5, attn_dim=4,
                                                    num_categories=3))
  params, _ = jax.jit(task.init)(jax.random.key(0), {"regions": regions})
  greedy = jax.jit(lambda p, r: task.generate(p, r, beam_width=1))
  beam = jax.jit(lambda p, r: cap.beam_search(*_captioner_step(task, p, r, 1), batch_size=3, beam_width=1, max_len=7,
                                              bos_id=cap_train.BOS, eos_id=cap_train.EOS, pad_id=cap_train.PAD,
                                              forbidden=(cap_train.PAD, cap_train.UNK, cap_train.BOS))["tokens"])
  a, b = greedy(params, regions), beam(params, regions)
  chex.assert_shape([a, b], [(3, 7)] * 2)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.isin(np.asarray(a), [cap_train.BOS, cap_train.UNK]).any()


def _captioner_step(task, params, regions, width):
  v = {"params": params}
  memory, carry = task.model.apply(v, regions, method=cap.Captioner.prepare)

  def step_fn(state, tokens):
    carry, out = task.model.apply(v, state[0], tokens, state[1], method=cap.Captioner.step)
    return (carry, state[1]), jax.nn.log_softmax(out["logits"], -1)
  return step_fn, cap.tile_beams((carry, memory), width)


# ------------------------------------------------------------------------------------------------- training


def _tiny_caption_data(n=8, max_len=6, seed=0):
  rng = np.random.default_rng(seed)
  words = [["a", "red", "disc"], ["a", "blue", "star"], ["two", "shapes"], ["a", "disc"]]
  tokenized = [[words[j] for j in rng.integers(0, 4, 2)] for _ in range(n)]
  vocab = cap_train.build_vocabulary(tokenized)
  enc = cap_train.encode_captions(tokenized, vocab, max_len)
  regions = rng.normal(size=(n, 4, 3)).astype(np.float32)
  return tokenized, vocab, enc, regions


def test_caption_encoding_sampler_and_vocabulary():
  tokenized, vocab, enc, regions = _tiny_caption_data()
  assert vocab.tokens[:4] == list(cap_train.SPECIALS)
  chex.assert_shape([enc["inputs"], enc["targets"], enc["mask"]], [(8, 2, 6)] * 3)
  ids = vocab.encode(tokenized[0][0])
  np.testing.assert_array_equal(enc["inputs"][0, 0, :len(ids) + 1], [cap_train.BOS, *ids])
  np.testing.assert_array_equal(enc["targets"][0, 0, :len(ids) + 1], [*ids, cap_train.EOS])
  assert cap_train.ids_to_tokens(enc["targets"][0, 0], vocab.tokens) == tokenized[0][0]
  out = cap_train.CaptionSampler()({"regions": regions, **enc}, np.random.default_rng(0))
  chex.assert_shape([out["inputs"], out["mask"]], [(8, 6)] * 2)
  assert all(any((out["targets"][i] == enc["targets"][i, j]).all() for j in range(2)) for i in range(8))
  with pytest.raises(ValueError, match="--max_caption_len=3"):
    cap_train.encode_captions(tokenized, vocab, 3)


def test_sae_decoder_is_frozen_and_the_captioner_trains_through_the_loop():
  from research.data.memory import ArrayBatches
  from research.train import loop, task as task_lib
  tokenized, vocab, enc, regions = _tiny_caption_data()
  sae = cap_train.SentenceAutoEncoderTask(vocab_size=len(vocab), embed_dim=4, hidden_dim=6, code_dim=3)
  sae_params, _ = jax.jit(sae.init)(jax.random.key(0), {"inputs": jnp.zeros((2, 6), jnp.int32)})
  task = cap_train.CaptioningTask(model_name="caption_soft_attention", vocab_size=len(vocab), max_len=6,
                                  model_kwargs=dict(embed_dim=6, hidden_dim=8, context_dim=5, attn_dim=4),
                                  sae_weight=1.0, sae_decoder=sae_params["decoder"],
                                  sae_kwargs=dict(embed_dim=4, hidden_dim=6, code_dim=3), beam_width=2,
                                  references=tokenized, vocab_tokens=tuple(vocab.tokens))
  data = ArrayBatches({"regions": regions, **enc}, global_batch_size=4, seed=0, transform=cap_train.CaptionSampler())
  state, _ = loop.train(task, data, config=loop.LoopConfig(num_steps=2, progress_bar=False, checkpoint_every=0,
                                                            eval_every=0),
                        mesh=task_lib.make_mesh(), workdir=None)  # eval (beam search, BLEU, CIDEr-D): the smoke test
  chex.assert_trees_all_equal(jax.device_get(state.model_state["sae_decoder"]), jax.device_get(sae_params["decoder"]))
  init_rng = jax.random.split(jax.random.PRNGKey(0))[0]  # the loop's: task.init gets split(PRNGKey(seed))[0]
  init, _ = jax.jit(task.init)(init_rng, {"regions": jnp.asarray(regions)})
  chex.assert_trees_all_equal_shapes(init, state.params)
  # the bridge only feeds SAE-Dec: it moved, so the regulariser's gradient reaches the captioner
  assert not np.allclose(np.asarray(state.params["decoder"]["sae_bridge"]["kernel"]),
                         np.asarray(init["decoder"]["sae_bridge"]["kernel"]))
  seen = []
  loop.train(task, ArrayBatches({"regions": regions, **enc}, global_batch_size=4, seed=1,
                                transform=cap_train.CaptionSampler()),
             config=loop.LoopConfig(num_steps=1, progress_bar=False, checkpoint_every=0, eval_every=0),
             mesh=task_lib.make_mesh(), workdir=None, on_step=lambda step, m: seen.append(jax.device_get(m)))
  assert seen[0]["sae_dec_ce"] > 0 and seen[0]["caption_ce"] > 0  # both terms are in the training loss


# ----------------------------------------------------------------------------------------------- experiment


def _smoke_config(**overrides):
  from absl import flags
  from experiments import captioning, common
  from research.methods.captioning_experiment import CaptioningConfig
  fv = flags.FlagValues()
  captioning.define_flags(fv)
  fv(["prog", f"--flagfile={SMOKE}"])
  return common.config_from_flags(CaptioningConfig, flag_values=fv, **overrides)


def test_smoke_flagfile_end_to_end(tmp_path):
  """The smoke flagfile's settings in-process, its full model only (SAE pre-training, two-stream attention, the SAE-Dec
  branch, beam search) without the concept stage and the figure, to keep the default suite short; the CLI run of the
  whole flagfile (four rows, concepts, figure) is -m slow: every metric finite, summary written."""
  from research.methods import captioning_experiment
  cfg = _smoke_config(data_dir=str(tmp_path / "tfds"), rows=("two_stream_sae",), concept_steps=0, num_examples=0)
  summary = captioning_experiment.run(cfg, str(tmp_path / "run"))
  assert set(summary["table"]) == {"two_stream_sae"}
  for row in summary["table"].values():
    assert all(np.isfinite(row[m][0]) for m in ("bleu4", "cider_d", "caption_ce"))
  results = json.loads((tmp_path / "run" / "two_stream_sae_seed0" / "results.json").read_text())
  assert results["eval_images"] == captions_lib.CONFIGS["small"].num_validation and results["sae_weight"] > 0
  assert summary["figure"] is None and summary["sae"][0]["token_accuracy"] >= 0
  assert "| two_stream_sae |" in (tmp_path / "run" / "summary.md").read_text()
  assert json.loads((tmp_path / "run" / "two_stream_sae_seed0" / "results.json").read_text())["step"] == 3


def _run_cli(*args, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("RESEARCH_TEST_XLA_FLAGS", ""))
  return subprocess.run([sys.executable, "-m", "experiments.captioning", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_smoke_flagfile(tmp_path):
  proc = _run_cli(f"--flagfile={SMOKE}", f"--workdir={tmp_path}", f"--data_dir={tmp_path / 'tfds'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary["table"]) == {"soft", "two_stream", "soft_sae", "two_stream_sae"}
  assert os.path.exists(tmp_path / "captioning_examples.png") and summary["encoder"]["concepts"]["bce"] > 0
  assert "two_stream_beats_soft_bleu4" in summary["claims"] and "| row |" in proc.stdout


def test_cli_bad_flag_is_one_clear_error(tmp_path):
  proc = _run_cli(f"--workdir={tmp_path}", "--data_dir=/nonexistent", "--num_steps=0", timeout=120)
  assert proc.returncode == 1 and "error: --num_steps must be positive" in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--rows=soft,bogus"], "--rows: unknown 'bogus'"),
    (["--rows=soft,soft"], "--rows lists a row twice"),
    (["--num_steps=0"], "--num_steps must be positive"),
    (["--sae_weight=0"], "--sae_weight=0.0 must be positive"),
    (["--rows=soft_sae", "--sae_steps=0"], "--sae_steps=0"),
    (["--dropout=1.5"], "--dropout=1.5 must lie in [0, 1)"),
    (["--seeds=0,0"], "distinct seeds"),
    (["--beam_width=0"], "--beam_width must be positive"),
    (["--length_penalty=-1"], "--length_penalty=-1.0 must be >= 0"),
])
def test_bad_flags_are_one_clear_error(args, message):
  check_flag_error("captioning", args, message)


def test_data_errors_name_the_flag(tmp_path):
  from research.methods import captioning_experiment
  cfg = _smoke_config(data_dir=str(tmp_path / "tfds"), max_caption_len=4)
  with pytest.raises(ValueError, match="--max_caption_len=4 is shorter"):
    captioning_experiment.load_data(cfg)
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=2), pytest.raises(ValueError, match="'image' and 'captions'"):
    captions_lib.load_split("train", str(tmp_path / "tfds"), "shapes_scenes")
