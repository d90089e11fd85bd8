r"""Large-minibatch SGD (Goyal et al. 2017; seed 003 §17.8): accuracy vs global batch size, with and without
the recipe, on simulated CPU devices.

  python -m experiments.large_minibatch --flagfile=experiments/configs/large_minibatch_smoke.flags
  python -m experiments.large_minibatch --flagfile=experiments/configs/large_minibatch.flags

For every global batch size B in ``--batch_sizes`` and the same number of epochs (so larger B = fewer
iterations), one run per ``--conditions`` entry of a post-activation ResNet over k = B / ``--per_device_batch``
simulated devices (the paper's k workers of n examples: per-worker BN over n examples at every B, the loss
normalised by the global batch; ``--num_devices`` must be at least the largest k):
  * ``no_recipe``: the small-batch LR ``--learning_rate`` unchanged, no warmup, BN γ = 1 everywhere;
  * ``linear_warmup``: Linear Scaling Rule (LR = ``--learning_rate`` · B / ``--base_batch_size``) and gradual
    warmup over ``--warmup_epochs`` from the small-batch LR (``warmup_init = base/B``), BN γ = 1;
  * ``recipe``: ``linear_warmup`` plus zero-init γ of each residual block's last BN.
All exclude BN γ/β and biases from weight decay.
Writes ``summary.json``, ``summary.md`` and ``accuracy_vs_batch.png``; the experiment itself is
``research.methods.large_minibatch``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from absl import app, flags

from experiments import common

if TYPE_CHECKING:
  from research.methods import large_minibatch

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
flags.DEFINE_string("workdir", "/tmp/research/large_minibatch", "Output directory (runs resume).")
flags.DEFINE_integer("num_devices", 16, "Simulated CPU devices (set before JAX starts); >= max batch / n.")
flags.DEFINE_string("model", "resnet18", "Post-activation ResNet (has zero_init_last_bn).")
flags.DEFINE_string("model_kwargs", '{"width": 16}', "JSON dict of model arguments.")
flags.DEFINE_integer("num_classes_subset", 10, "Classes of `shapes` used (label < N; 0 = all 100).")
flags.DEFINE_list("batch_sizes", ["32", "128", "512"], "Global batch sizes kn.")
flags.DEFINE_integer("per_device_batch", 32, "n, examples per worker/device (the BN batch); k = B / n devices; "
                     "0 = every device at every B.")
flags.DEFINE_integer("base_batch_size", 32, "Batch size at which --learning_rate is tuned (k = B / this).")
flags.DEFINE_float("learning_rate", 0.05, "LR for --base_batch_size.")
flags.DEFINE_float("epochs", 10.0, "Training epochs for every batch size.")
flags.DEFINE_float("warmup_epochs", 2.0, "Gradual warmup length (recipe runs).")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay (not on BN/bias).")
flags.DEFINE_list("conditions", ["no_recipe", "linear_warmup", "recipe"], "Which runs per batch size.")
flags.DEFINE_integer("seed", 0, "Seed.")


def config_from_flags() -> large_minibatch.LargeMinibatchConfig:
  from research.methods import large_minibatch
  model_kwargs = common.json_dict_flag("model_kwargs")
  batch_sizes = common.int_list_flag("batch_sizes")
  return large_minibatch.LargeMinibatchConfig(
      data_dir=FLAGS.data_dir, model=FLAGS.model, model_kwargs=model_kwargs,
      num_classes_subset=FLAGS.num_classes_subset, batch_sizes=batch_sizes, per_device_batch=FLAGS.per_device_batch,
      base_batch_size=FLAGS.base_batch_size,
      learning_rate=FLAGS.learning_rate, epochs=FLAGS.epochs, warmup_epochs=FLAGS.warmup_epochs,
      weight_decay=FLAGS.weight_decay, conditions=tuple(FLAGS.conditions), seed=FLAGS.seed)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  jax.config.update("jax_num_cpu_devices", FLAGS.num_devices)
  common.setup()
  from research.methods import large_minibatch
  with common.clean_errors():
    summary = large_minibatch.run(config_from_flags(), FLAGS.workdir)
  common.print_markdown_summary(FLAGS.workdir, summary, extra=f"devices {summary['num_devices']}  ")


if __name__ == "__main__":
  app.run(main)
