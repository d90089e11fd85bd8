r"""Supervised classification on any registered model and TFDS dataset (offline default: ``shapes``).

  python -m experiments.classify --flagfile=experiments/configs/classify_smoke.flags
  python -m experiments.classify --flagfile=experiments/configs/classify_shapes.flags --workdir=/tmp/wrn

Resumes automatically from ``--workdir``; writes ``results.json``, ``metrics.jsonl``, ``tb/``.

Recipes (research/train/recipes.py), e.g. Goyal et al.'s large-minibatch SGD on a post-activation ResNet:
  --lr_scaling=linear --base_batch_size=256 --warmup_steps=500 --warmup_init=0.125 --zero_init_residual
and --freeze_bn_last_steps=N (SENet), --loss=softmax_center (Wen et al.), --temperature=T, --label_smoothing,
--loss=hinge|logistic|square, --schedule=onecycle (see experiments.super_convergence for the LR range test).
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.train.classify import ClassifyConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``ClassifyConfig``."""
  workdir: str = setting("/tmp/research/classify", "Output directory; an existing run there is resumed.")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.classify``: one per ``ClassifyConfig`` field (its name, default and help), and
  ``--workdir``."""
  common.define_flags(ClassifyConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> ClassifyConfig:
  """The ``ClassifyConfig`` of the parsed flags (ValueError naming the flag for a bad list or JSON value)."""
  return common.config_from_flags(ClassifyConfig, flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  from research.train.classify import train_and_evaluate
  workdir = common.config_from_flags(ExperimentFlags).workdir
  with common.clean_errors():
    cfg = config_from_flags()
    results = train_and_evaluate(cfg, workdir)
  common.print_summary(results, workdir)


if __name__ == "__main__":
  app.run(main)
