"""Entity-level metrics (research.train.sequence_metrics) against seqeval (a test-only oracle following conlleval) on
many random tag sequences, invalid ones included (stray I-, type changes inside entities, E/S of IOBES)."""

from __future__ import annotations

import numpy as np
import pytest

from research.train import sequence_metrics as sm

seqeval_metrics = pytest.importorskip("seqeval.metrics")
from seqeval.metrics.sequence_labeling import get_entities  # noqa: E402

TYPES = ("PER", "ORG", "LOC", "MISC")


def _random_tags(rng, n, prefixes):
  tags = []
  for _ in range(n):
    p = prefixes[rng.integers(len(prefixes))]
    tags.append("O" if p == "O" else f"{p}-{TYPES[rng.integers(len(TYPES))]}")
  return tags


def _corrupt(rng, tags, prefixes, rate):
  return [_random_tags(rng, 1, prefixes)[0] if rng.random() < rate else t for t in tags]


def test_hand_examples_follow_conlleval():
  assert sm.extract_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
  assert sm.extract_entities(["O", "I-PER", "I-PER"]) == [("PER", 1, 3)]  # a stray I- starts an entity
  assert sm.extract_entities(["I-PER", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 2)]  # type change: two entities
  assert sm.extract_entities(["B-PER", "B-PER"]) == [("PER", 0, 1), ("PER", 1, 2)]
  assert sm.extract_entities(["S-ORG", "I-ORG", "E-ORG"]) == [("ORG", 0, 1), ("ORG", 1, 3)]
  assert sm.extract_entities(["O", "O"]) == []
  s = sm.entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]])
  assert (s["correct"], s["predicted"], s["gold"]) == (1, 2, 2) and s["f1"] == 0.5
  assert s["per_type"]["PER"]["f1"] == 1.0 and s["per_type"]["LOC"]["recall"] == 0.0
  assert s["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
  assert sm.entity_scores([["O"]], [["O"]])["f1"] == 0.0
  with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
    sm.entity_scores([["O", "O"]], [["O"]])


@pytest.mark.parametrize("prefixes", [("O", "B", "I"), ("O", "O", "B", "I", "E", "S")])
def test_entities_and_scores_match_seqeval_on_random_sequences(prefixes):
  rng = np.random.default_rng(len(prefixes))
  for trial in range(60):
    n_sent = int(rng.integers(1, 12))
    gold = [_random_tags(rng, int(rng.integers(1, 15)), prefixes) for _ in range(n_sent)]
    pred = [_corrupt(rng, g, prefixes, rate=float(rng.choice([0.05, 0.3, 1.0]))) for g in gold]
    for seq in gold + pred:
      want = sorted((t, s, e + 1) for t, s, e in get_entities(seq))
      assert sorted(sm.extract_entities(seq)) == want, seq
    got = sm.entity_scores(gold, pred)
    for key, fn in (("precision", seqeval_metrics.precision_score), ("recall", seqeval_metrics.recall_score),
                    ("f1", seqeval_metrics.f1_score)):
      want = fn(gold, pred, zero_division=0)
      assert got[key] == pytest.approx(want, abs=1e-12), (key, trial)
    report = seqeval_metrics.classification_report(gold, pred, output_dict=True, zero_division=0)
    for typ, row in got["per_type"].items():
      if typ in report:
        for key in ("precision", "recall", "f1"):
          assert row[key] == pytest.approx(report[typ][key + ("-score" if key == "f1" else "")], abs=1e-12)
        assert row["support"] == report[typ]["support"]
      else:  # only predicted, never gold: seqeval's report leaves it out
        assert row["support"] == 0 and row["recall"] == 0.0
    assert sm.token_accuracy(gold, pred) == pytest.approx(seqeval_metrics.accuracy_score(gold, pred))


def test_ids_to_tags():
  names = ["O", "B-PER", "I-PER"]
  assert sm.ids_to_tags(np.array([[1, 2, 0], [0, 1, 2]]), [2, 3], names) == [["B-PER", "I-PER"],
                                                                              ["O", "B-PER", "I-PER"]]
