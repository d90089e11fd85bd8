"""Model zoo table: per-layer parameters and compute, or docs/models.md for every registered model.

  python -m experiments.model_zoo --model=resnet50            # per-layer table (conv/dense layers)
  python -m experiments.model_zoo --all --out=docs/models.md  # every model: params, GMACs, published figures

Compute = analytic multiply-accumulates of conv and dense layers (``research.models.profile``), from
``jax.eval_shape`` only, at each model's native resolution. Runs in about a minute on CPU for ``--all``.
"""

from __future__ import annotations

from absl import app, flags

from experiments import common

from research import models
from research.models.profile import layer_table, models_markdown

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Registered model name (see research.models.names()).")
flags.DEFINE_bool("all", False, "Write the table of every registered model to --out.")
flags.DEFINE_string("out", "docs/models.md", "Output markdown for --all.")
flags.DEFINE_integer("resolution", None, "Input resolution (default: the model's native one).")
flags.DEFINE_integer("num_classes", None, "Classes (default 1000, or 10 for CIFAR models).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.all and not FLAGS.model:
    raise app.UsageError("pass --model=NAME or --all")
  common.setup()
  with common.clean_errors():
    if FLAGS.all:
      text = models_markdown()
      with open(FLAGS.out, "w") as f:
        f.write(text)
      print(f"wrote {FLAGS.out} ({len(models.names())} models)")
    else:
      if FLAGS.resolution is not None and FLAGS.resolution < 1:
        raise ValueError(f"--resolution must be positive, got {FLAGS.resolution}")
      print(layer_table(FLAGS.model, FLAGS.resolution, FLAGS.num_classes))


if __name__ == "__main__":
  app.run(main)
