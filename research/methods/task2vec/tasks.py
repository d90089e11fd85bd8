"""Task suites built declaratively from a dataset with ``label`` (fine) and ``coarse_label`` (Task2Vec §4).

A ``TaskSpec`` names a set of fine classes and how its images are labelled; ``materialize`` turns it into index
arrays into an image ``Pool`` (a class-balanced, seeded random subset of the train and test splits; never the
first images in dataset order, the reference's caching bug). Families of tasks:

  * ``family/<coarse>``: classify the fine classes within one superclass (iNat/CUB-like fine-grained tasks).
  * ``random/<i>``: a random subset of fine classes.
  * ``super/<name>/fine`` and ``super/<name>/coarse``: the same images (several superclasses) labelled by fine vs
    coarse label.
  * ``ladder/<base>/noise<p>``, ``ladder/<base>/n<k>``, ``ladder/<base>/random_labels``: difficulty ladders
    (label noise, fewer samples per class, labels shuffled).
  * ``target/<coarse>``: few-shot versions of the family tasks (targets of the model-selection meta-task).

Taxonomic distance between two tasks = mean tree distance between their fine classes (0 same fine class, 1 same
superclass, 2 same group, 3 otherwise; without a group level 2 means different superclasses).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Sequence

import numpy as np

from research.configs import setting


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  fine_classes: tuple[int, ...]
  label: str = "fine"  # 'fine' | 'coarse'
  samples_per_class: int | None = None  # train images per fine class (None: all in the pool)
  label_noise: float = 0.0  # fraction of train labels replaced by a uniformly random class
  random_labels: bool = False  # shuffle train labels (nothing to learn)
  kind: str = "family"
  in_taxonomy: bool = False  # used for spearman_taxonomy
  seed: int = 0


@dataclasses.dataclass
class Taxonomy:
  """fine -> coarse (-> group) tables and names."""
  fine_to_coarse: np.ndarray
  coarse_to_group: np.ndarray | None
  coarse_names: Sequence[str]
  group_names: Sequence[str] | None

  @property
  def num_fine(self) -> int:
    return len(self.fine_to_coarse)

  def class_distance(self) -> np.ndarray:
    """``[F, F]`` tree distance between fine classes."""
    f2c = self.fine_to_coarse
    same_c = f2c[:, None] == f2c[None, :]
    d = np.where(same_c, 1, 2).astype(np.float64)
    if self.coarse_to_group is not None:
      g = self.coarse_to_group[f2c]
      d = np.where(same_c, 1, np.where(g[:, None] == g[None, :], 2, 3)).astype(np.float64)
    np.fill_diagonal(d, 0)
    return d

  def task_distance(self, a: TaskSpec, b: TaskSpec) -> float:
    d = self.class_distance()
    return float(d[np.ix_(list(a.fine_classes), list(b.fine_classes))].mean())


def taxonomy_from_labels(fine: np.ndarray, coarse: np.ndarray, hierarchy: dict | None = None) -> Taxonomy:
  """Taxonomy from the dataset's (label, coarse_label) pairs; groups from ``research.data.hierarchy`` if known."""
  num_fine = int(fine.max()) + 1
  f2c = np.full(num_fine, -1)
  for f, c in zip(fine, coarse):
    if f2c[f] not in (-1, c):
      raise ValueError(f"fine class {f} appears with two coarse labels ({f2c[f]}, {c}); not a taxonomy")
    f2c[f] = c
  if (f2c < 0).any():
    raise ValueError(f"fine classes {np.flatnonzero(f2c < 0).tolist()} have no images")
  if hierarchy is not None:
    return Taxonomy(f2c, np.asarray(hierarchy["coarse_to_group"]), list(hierarchy["coarse_names"]),
                    list(hierarchy["group_names"]))
  return Taxonomy(f2c, None, [f"c{c}" for c in range(int(f2c.max()) + 1)], None)


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  """The task suite; the fields with a flag are flags of ``experiments.task2vec`` (``research.configs.setting``),
  ``flag=False`` ones are library-only. ``seed`` is set from ``Task2VecConfig.seed`` there."""
  num_random: int = setting(4, "Random fine-class subset tasks.")
  random_size: int = setting(5, "Fine classes per random task.", flag=False)
  num_supers: int = setting(5, "Super tasks (groups of superclasses; fine/coarse relabellings); their fine "
                            "versions are experts.")
  coarse_per_super: int = setting(4, "Superclasses per super task when there is no group level.", flag=False)
  relabel_coarse: int = setting(2, "Super tasks that also get a coarse-labelled twin (same images).")
  ladder_bases: int = setting(2, "Family tasks with a difficulty ladder (noise, fewer samples, random).")
  ladder_noise: tuple[float, ...] = setting((0.25, 0.5), "Label-noise levels of the difficulty ladders.", flag=False)
  ladder_samples: tuple[int, ...] = setting((20, 8), "Samples per class of the difficulty ladders.", flag=False)
  target_samples: int = setting(10, "Train images per class of the few-shot model-selection targets.")
  family_experts: bool = setting(True, "Also use one family task per super as an expert (smaller source tasks).",
                                 flag=False)
  max_families: int = setting(0, "Use only the first N superclasses as family tasks (0 = all).")
  seed: int = setting(0, "Seed of the suite (random tasks, ladders, targets).", flag=False)


def _supers(tax: Taxonomy, cfg: SuiteConfig) -> list[tuple[str, list[int]]]:
  """Groups of superclasses: the taxonomy's groups, else consecutive blocks of ``coarse_per_super``."""
  nc = len(tax.coarse_names)
  if tax.coarse_to_group is not None:
    out = [(str(tax.group_names[g]), [int(c) for c in np.flatnonzero(tax.coarse_to_group == g)])
           for g in range(int(tax.coarse_to_group.max()) + 1)]
  else:
    k = cfg.coarse_per_super
    out = [(f"s{i}", list(range(i * k, min((i + 1) * k, nc)))) for i in range(-(-nc // k))]
  return out[:cfg.num_supers]


def _fines(tax: Taxonomy, coarse: Sequence[int]) -> tuple[int, ...]:
  return tuple(int(f) for f in np.flatnonzero(np.isin(tax.fine_to_coarse, list(coarse))))


def build_suite(tax: Taxonomy, cfg: SuiteConfig = SuiteConfig()) -> dict[str, list[TaskSpec]]:
  """``{'tasks': [...embedded tasks...], 'experts': [...source tasks...], 'targets': [...]}``."""
  rng = np.random.default_rng(cfg.seed)
  nc = len(tax.coarse_names)
  coarse_ids = list(range(nc))
  if cfg.max_families:
    coarse_ids = coarse_ids[:cfg.max_families]
  tasks: list[TaskSpec] = []
  families = {}
  for c in coarse_ids:
    fines = _fines(tax, [c])
    if len(fines) < 2:
      continue
    t = TaskSpec(f"family/{tax.coarse_names[c]}", fines, kind="family", in_taxonomy=True)
    families[c] = t
    tasks.append(t)
  for i in range(cfg.num_random):
    fines = tuple(sorted(int(f) for f in rng.choice(tax.num_fine, cfg.random_size, replace=False)))
    tasks.append(TaskSpec(f"random/{i}", fines, kind="random", in_taxonomy=True))
  experts = []
  for j, (name, coarse) in enumerate(_supers(tax, cfg)):
    fines = _fines(tax, coarse)
    t = TaskSpec(f"super/{name}/fine", fines, kind="super_fine")
    tasks.append(t)
    experts.append(t)
    if j < cfg.relabel_coarse:
      tasks.append(TaskSpec(f"super/{name}/coarse", fines, label="coarse", kind="super_coarse"))
    if cfg.family_experts:
      inside = [c for c in coarse if c in families]
      if len(inside) > 1:
        experts.append(families[inside[1]])
  for c in list(families)[:cfg.ladder_bases]:
    base = families[c]
    short = base.name.split("/", 1)[1]
    for p in cfg.ladder_noise:
      tasks.append(dataclasses.replace(base, name=f"ladder/{short}/noise{p:g}", label_noise=p, kind="ladder",
                                       in_taxonomy=False))
    for k in cfg.ladder_samples:
      tasks.append(dataclasses.replace(base, name=f"ladder/{short}/n{k}", samples_per_class=k, kind="ladder",
                                       in_taxonomy=False))
    tasks.append(dataclasses.replace(base, name=f"ladder/{short}/random_labels", random_labels=True,
                                     kind="ladder", in_taxonomy=False))
  targets = [dataclasses.replace(t, name=f"target/{t.name.split('/', 1)[1]}", samples_per_class=cfg.target_samples,
                                 kind="target", in_taxonomy=False) for t in families.values()]
  return {"tasks": tasks, "experts": experts, "targets": targets}


def make_pool(train_fine: np.ndarray, test_fine: np.ndarray, classes: Sequence[int], train_per_class: int,
              test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict, dict]:
  """Seeded class-balanced subsets: (train rows, test rows, train positions per class, test positions)."""
  rng = np.random.default_rng(seed)
  tr_rows, te_rows, tr_pos, te_pos = [], [], {}, {}
  for f in sorted(classes):
    tr = np.flatnonzero(train_fine == f)
    te = np.flatnonzero(test_fine == f)
    if len(tr) < 2 or len(te) < 1:
      raise ValueError(f"fine class {f} has {len(tr)} train / {len(te)} test images; need >= 2 / >= 1")
    tr = rng.permutation(tr)[:train_per_class]
    te = rng.permutation(te)[:test_per_class]
    tr_pos[f] = np.arange(len(tr)) + sum(len(r) for r in tr_rows)
    te_pos[f] = np.arange(len(te)) + sum(len(r) for r in te_rows)
    tr_rows.append(tr)
    te_rows.append(te)
  return np.concatenate(tr_rows), np.concatenate(te_rows), tr_pos, te_pos


def materialize(spec: TaskSpec, tax: Taxonomy, train_pos: dict, test_pos: dict
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(train positions, train labels, test positions, test labels); labels in [0, K) ordered by class id."""
  if len(spec.fine_classes) < 2 and spec.label == "fine":
    raise ValueError(f"task {spec.name!r} has a single class; a task needs at least two")
  rng = np.random.default_rng([spec.seed, zlib.crc32(spec.name.encode())])
  if spec.label == "fine":
    mapping = {f: i for i, f in enumerate(spec.fine_classes)}
  elif spec.label == "coarse":
    cs = sorted({int(tax.fine_to_coarse[f]) for f in spec.fine_classes})
    if len(cs) < 2:
      raise ValueError(f"task {spec.name!r} has a single coarse class; a task needs at least two")
    mapping = {f: cs.index(int(tax.fine_to_coarse[f])) for f in spec.fine_classes}
  else:
    raise ValueError(f"task {spec.name!r}: label must be 'fine' or 'coarse', got {spec.label!r}")
  tr_i, tr_y, te_i, te_y = [], [], [], []
  for f in spec.fine_classes:
    if f not in train_pos:
      raise ValueError(f"task {spec.name!r} uses fine class {f}, which is not in the image pool")
    p = train_pos[f] if spec.samples_per_class is None else train_pos[f][:spec.samples_per_class]
    tr_i.append(p)
    tr_y.append(np.full(len(p), mapping[f]))
    te_i.append(test_pos[f])
    te_y.append(np.full(len(test_pos[f]), mapping[f]))
  tr_i, tr_y, te_i, te_y = map(np.concatenate, (tr_i, tr_y, te_i, te_y))
  k = int(tr_y.max()) + 1
  if spec.label_noise > 0:
    flip = rng.random(len(tr_y)) < spec.label_noise
    tr_y = np.where(flip, rng.integers(0, k, len(tr_y)), tr_y)
  if spec.random_labels:
    tr_y = rng.permutation(tr_y)
  return tr_i, tr_y.astype(np.int32), te_i, te_y.astype(np.int32)
