r"""Task2Vec (Achille et al., ICCV 2019): embed a suite of tasks with the FIM of a probe network, compare the
distances with the known taxonomy, and select experts with d_sym / d_asym.

  python -m experiments.task2vec                       # offline default on `shapes` (< 10 min on 2 CPU cores)
  python -m experiments.task2vec --flagfile=experiments/configs/task2vec_smoke.flags
  python -m experiments.task2vec --dataset=cifar100 --data_dir=DIR --workdir=/tmp/t2v_c100

Writes ``embeddings.npz``, ``distances.csv``, ``summary.json`` and PNG figures to ``--workdir``; the trained
probe is kept in ``--workdir/probe`` and reused on re-run.
"""

from __future__ import annotations

import dataclasses
import json

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.task2vec.experiment import Task2VecConfig
from research.methods.task2vec.tasks import SuiteConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``Task2VecConfig``."""
  workdir: str = setting("/tmp/research/task2vec", "Output directory (probe checkpoint reused on re-run).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.task2vec``: one per ``Task2VecConfig`` field and per ``SuiteConfig`` field
  with a flag (``--num_random``, ``--num_supers``, ...; the suite's seed is ``--seed``), and ``--workdir``."""
  common.define_flags(Task2VecConfig, flag_values=flag_values)
  common.define_flags(SuiteConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> Task2VecConfig:
  """The ``Task2VecConfig`` of the parsed flags, its ``suite`` from the suite flags and ``--seed``."""
  cfg = common.config_from_flags(Task2VecConfig, flag_values=flag_values)
  suite = common.config_from_flags(SuiteConfig, flag_values=flag_values, seed=cfg.seed)
  return dataclasses.replace(cfg, suite=suite)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  from research.methods.task2vec import experiment
  workdir = common.config_from_flags(ExperimentFlags).workdir
  with common.clean_errors():
    summary = experiment.run(config_from_flags(), workdir)
  ms = summary["model_selection"]
  print(json.dumps({
      "spearman_taxonomy (task2vec d_sym)": summary["spearman_taxonomy"],
      "spearman_taxonomy (domain baseline)": summary["spearman_taxonomy_domain"],
      "norm_vs_error_spearman": summary["norm_vs_error_spearman"],
      "model_selection relative error increase over oracle": ms["relative_error_increase"],
      "timings_seconds": summary["timings_seconds"],
  }, indent=2))
  print(f"results: {workdir}/summary.json (+ embeddings.npz, distances.csv, *.png)")


if __name__ == "__main__":
  app.run(main)
