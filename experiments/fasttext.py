r"""fastText (Joulin et al., "Bag of Tricks for Efficient Text Classification", EACL 2017) vs a BiLSTM / CNN.

  python -m experiments.fasttext --flagfile=experiments/configs/fasttext_smoke.flags
  python -m experiments.fasttext --flagfile=experiments/configs/fasttext.flags
  python -m experiments.fasttext --dataset=ag_news_subset --text_keys=title,description --data_dir=DIR
  python -m experiments.fasttext --train_file=train.tsv --test_file=test.tsv --methods=fasttext

The library is ``research.methods.fasttext_experiment`` (driver), ``research.train.text_classify`` (task, data
arrays), ``research.models.sequence.fasttext`` (models), ``research.ops.sequence`` (hierarchical softmax),
``research.data.text`` (tokenizer, n-gram hashing, vocabulary, label<TAB>text files) and
``research.data.text_corpora`` (the offline ``text_topics`` corpus, TFDS text readers); this script parses the flags
and calls ``fasttext_experiment.run``. Writes ``<workdir>/<run>_seed<s>/`` per run, ``summary.json`` and
``summary.md``.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from experiments import common
from research.configs import setting
from research.methods.fasttext_experiment import FastTextConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """Settings of this entry point that are not part of ``FastTextConfig``."""
  workdir: str = setting("/tmp/research/fasttext", "Output directory (finished runs are kept and not trained again).")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Every flag of ``experiments.fasttext``: one per ``FastTextConfig`` field and ``--workdir``."""
  common.define_flags(FastTextConfig, flag_values=flag_values)
  common.define_flags(ExperimentFlags, flag_values=flag_values)


define_flags()


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> FastTextConfig:
  """The ``FastTextConfig`` of the parsed flags (ValueError naming the flag for a bad value)."""
  return common.config_from_flags(FastTextConfig, flag_values=flag_values)


def main(argv):
  def run(config, workdir):  # imported after common.setup() (jax.distributed starts first)
    from research.methods import fasttext_experiment
    return fasttext_experiment.run(config, workdir)
  common.run_summary_experiment(argv, config_from_flags, ExperimentFlags, run)


if __name__ == "__main__":
  app.run(main)
