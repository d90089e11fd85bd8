r"""Super-convergence (Smith & Topin 2017; seed 003 §1.1): LR range test, then one-cycle vs a step schedule.

  python -m experiments.super_convergence --flagfile=experiments/configs/super_convergence_smoke.flags
  python -m experiments.super_convergence --flagfile=experiments/configs/super_convergence.flags

1. LR range test (``research.train.lr_finder``): exponential LR ramp, loss vs LR plot ``lr_range_test.png``,
   suggested maximum LR by the documented rule.
2. Baseline: piecewise-constant "step" schedule (LR ×0.1 at 50% and 75% of ``--step_steps``) at
   ``--step_lr``, the standard ResNet recipe.
3. One cycle (``--schedule=onecycle``, peak = the suggested max LR unless ``--onecycle_max_lr``) for each
   budget in ``--onecycle_steps``.
The target accuracy is ``--target_accuracy`` or, when 0, the baseline's final eval accuracy; the experiment
reports the iterations each run needed to reach it (first evaluation at or above it), ``summary.json``,
``summary.md`` and ``curves.png``. Every run is a classification run in ``workdir/<name>`` (resumable); the
experiment itself is ``research.methods.super_convergence``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from absl import app, flags

from experiments import common

if TYPE_CHECKING:
  from research.methods import super_convergence

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
flags.DEFINE_string("workdir", "/tmp/research/super_convergence", "Output directory (runs resume).")
flags.DEFINE_string("model", "resnet18", "Registered model name.")
flags.DEFINE_string("model_kwargs", '{"width": 16}', "JSON dict of model arguments.")
flags.DEFINE_integer("num_classes_subset", 20, "Classes of `shapes` used (label < N; 0 = all 100).")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_float("weight_decay", 1e-4, "Weight decay (Smith & Topin: large LRs regularise; they use 1e-4).")
flags.DEFINE_float("momentum", 0.9, "Nesterov momentum.")
flags.DEFINE_float("range_min_lr", 1e-3, "LR range test start.")
flags.DEFINE_float("range_max_lr", 10.0, "LR range test end.")
flags.DEFINE_integer("range_steps", 100, "LR range test steps.")
flags.DEFINE_float("range_divisor", 3.0, "suggested max LR = LR at the smoothed-loss minimum / this.")
flags.DEFINE_float("step_lr", 0.1, "Baseline step schedule LR.")
flags.DEFINE_list("step_extra_lrs", [], "Control step-schedule runs at these LRs (0 = the one-cycle peak LR).")
flags.DEFINE_integer("step_steps", 800, "Baseline step schedule iterations.")
flags.DEFINE_list("onecycle_steps", ["200", "400"], "One-cycle budgets (iterations).")
flags.DEFINE_float("onecycle_max_lr", 0.0, "One-cycle peak LR; 0 = the range test's suggestion.")
flags.DEFINE_float("target_accuracy", 0.0, "Target eval accuracy; 0 = the baseline's final accuracy.")
flags.DEFINE_integer("eval_every", 50, "Evaluate every N steps.")
flags.DEFINE_integer("seed", 0, "Seed.")


def config_from_flags() -> super_convergence.SuperConvergenceConfig:
  from research.methods import super_convergence
  model_kwargs = common.json_dict_flag("model_kwargs")
  onecycle_steps = common.int_list_flag("onecycle_steps")
  return super_convergence.SuperConvergenceConfig(
      data_dir=FLAGS.data_dir, model=FLAGS.model, model_kwargs=model_kwargs,
      num_classes_subset=FLAGS.num_classes_subset, batch_size=FLAGS.batch_size, weight_decay=FLAGS.weight_decay,
      momentum=FLAGS.momentum, range_min_lr=FLAGS.range_min_lr, range_max_lr=FLAGS.range_max_lr,
      range_steps=FLAGS.range_steps, range_divisor=FLAGS.range_divisor, step_lr=FLAGS.step_lr,
      step_extra_lrs=common.float_list_flag("step_extra_lrs"),
      step_steps=FLAGS.step_steps, onecycle_steps=onecycle_steps, onecycle_max_lr=FLAGS.onecycle_max_lr,
      target_accuracy=FLAGS.target_accuracy, eval_every=FLAGS.eval_every, seed=FLAGS.seed)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  from research.methods import super_convergence
  with common.clean_errors():
    summary = super_convergence.run(config_from_flags(), FLAGS.workdir)
  common.print_markdown_summary(FLAGS.workdir, summary)


if __name__ == "__main__":
  app.run(main)
