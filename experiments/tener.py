r"""TENER (Yan et al. 2019, "Adapting Transformer Encoder for Named Entity Recognition") on an offline NER corpus.

  python -m experiments.tener --flagfile=experiments/configs/tener_smoke.flags
  python -m experiments.tener --flagfile=experiments/configs/tener.flags
  python -m experiments.tener --variant=tener,transformer --seeds=0 --num_steps=500
  python -m experiments.tener --dataset=conll2003 --data_dir=DIR   # a prepared TFDS conll2003 (array_record)

The library is ``research.methods.tener_experiment`` (driver), ``research.train.tagging`` (task, entity-F1 eval),
``research.train.sequence_metrics`` (conlleval's entity F1), ``research.models.sequence.tener`` (taggers, CRF),
``research.layers.attention`` (relative attention), ``research.ops.sequence`` (CRF) and ``research.data.ner``
(the ``grammar_ner`` dataset, conll2003 reading); this script parses the flags and calls ``tener_experiment.run``.
Writes ``<workdir>/<variant>_seed<s>/`` per run, ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.tener_experiment import TENERConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``TENERConfig``."""
  workdir: str = setting("/tmp/research/tener", "Output directory (finished runs are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.tener``: one per ``TENERConfig`` field, ``--workdir`` and the alias ``--variant``."""
  common.define_flags(TENERConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)
  if "variant" not in flag_values:  # experiments.tcc defines the same alias of the shared --variants
    flags.DEFINE_alias("variant", "variants", flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> TENERConfig:
  """The ``TENERConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(TENERConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import tener_experiment
    return tener_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
