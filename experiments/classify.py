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


from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "wrn16_4", "Registered model name (research.models.names() or wrn{d}_{k}).")
flags.DEFINE_string("model_kwargs", "{}", "JSON dict of extra model arguments, e.g. '{\"dropout_rate\": 0.3}'.")
flags.DEFINE_string("dataset", "shapes", "TFDS dataset name: 'shapes' (offline, procedural) or a prepared one.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
flags.DEFINE_string("workdir", "/tmp/research/classify", "Output directory; an existing run there is resumed.")
flags.DEFINE_integer("num_steps", 1000, "Training steps.")
flags.DEFINE_integer("batch_size", 128, "Global batch size (divisible by the device count).")
flags.DEFINE_integer("eval_batch_size", 0, "Global eval batch size; 0 = --batch_size.")
flags.DEFINE_float("learning_rate", 0.1, "Peak learning rate.")
flags.DEFINE_enum("optimizer", "nesterov", ["sgd", "momentum", "nesterov", "adam", "adamw"], "Optimizer.")
flags.DEFINE_float("momentum", 0.9, "Momentum for momentum/nesterov.")
flags.DEFINE_enum("schedule", "cosine", ["constant", "cosine", "step", "onecycle", "linear"], "LR schedule.")
flags.DEFINE_integer("warmup_steps", 0, "Linear warmup steps from 0.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay (L2 for SGD variants, decoupled for adamw).")
flags.DEFINE_bool("decay_bn_and_bias", False, "Also decay BatchNorm parameters and biases.")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing for cross-entropy.")
flags.DEFINE_string("loss", "cross_entropy", "Loss name (research.train.losses).")
flags.DEFINE_float("grad_clip_norm", 0.0, "Clip gradients to this global norm (0 = off).")
flags.DEFINE_integer("seed", 0, "Seed for init, data order, augmentation and dropout.")
flags.DEFINE_integer("eval_every", 500, "Evaluate every N steps (and at the end).")
flags.DEFINE_integer("checkpoint_every", 500, "Checkpoint every N steps (and at the end).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.")
flags.DEFINE_integer("log_every", 10, "Log training metrics every N steps.")
flags.DEFINE_bool("sync_bn", False, "Cross-replica BatchNorm statistics (mean over the global batch).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Compute dtype (params stay float32).")
flags.DEFINE_enum("augment", "auto", ["auto", "none", "crop", "crop_flip"], "Augmentation; auto = dataset default.")
flags.DEFINE_integer("data_workers", 0, "grain worker processes (0 = in-process).")
flags.DEFINE_string("init_checkpoint", None, "Initialise params from this checkpoint when workdir has none.")
flags.DEFINE_bool("progress_bar", True, "Show a progress bar (process 0).")
# Recipes (research/train/recipes.py).
flags.DEFINE_enum("lr_scaling", "none", ["none", "linear"],
                  "linear: peak LR = --learning_rate * --batch_size / --base_batch_size (Goyal et al. 2017).")
flags.DEFINE_integer("base_batch_size", 256, "Batch size at which --learning_rate is given (--lr_scaling=linear).")
flags.DEFINE_float("warmup_init", 0.0, "Warmup starts at this fraction of the peak LR (Goyal et al.: 1/k).")
flags.DEFINE_bool("zero_init_residual", False,
                  "Zero-init γ of each residual block's last BN (Goyal et al. 2017; post-activation ResNets).")
flags.DEFINE_integer("freeze_bn_last_steps", 0,
                     "For the last N steps BN normalises with, and stops updating, its running statistics (SENet).")
flags.DEFINE_float("temperature", 1.0, "Softmax temperature T: softmax(logits / T) in the softmax losses.")
flags.DEFINE_float("center_loss_weight", 0.003, "λ of --loss=softmax_center (Wen et al. 2016, Eq. 5).")
flags.DEFINE_float("center_loss_alpha", 0.5, "Centre learning rate α of --loss=softmax_center (Wen et al., Eq. 4).")
flags.DEFINE_integer("num_classes_subset", 0, "Use only the classes with label < N (0 = all).")
flags.DEFINE_list("step_boundaries", ["0.5", "0.75"], "--schedule=step: fractions of --num_steps where LR *= 0.1.")
flags.DEFINE_float("onecycle_pct_start", 0.3, "--schedule=onecycle: fraction of steps with increasing LR.")
flags.DEFINE_integer("num_devices", 0, "Data-parallel over the first N devices of this (single) process; 0 = all.")


def config_from_flags():
  from research.train.classify import ClassifyConfig
  model_kwargs = common.json_dict_flag("model_kwargs")
  return ClassifyConfig(
      model=FLAGS.model, model_kwargs=model_kwargs, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      num_steps=FLAGS.num_steps, batch_size=FLAGS.batch_size, eval_batch_size=FLAGS.eval_batch_size,
      learning_rate=FLAGS.learning_rate, optimizer=FLAGS.optimizer, momentum=FLAGS.momentum,
      schedule=FLAGS.schedule, warmup_steps=FLAGS.warmup_steps, weight_decay=FLAGS.weight_decay,
      decay_bn_and_bias=FLAGS.decay_bn_and_bias, label_smoothing=FLAGS.label_smoothing, loss=FLAGS.loss,
      grad_clip_norm=FLAGS.grad_clip_norm, seed=FLAGS.seed, eval_every=FLAGS.eval_every,
      checkpoint_every=FLAGS.checkpoint_every, keep_checkpoints=FLAGS.keep_checkpoints, log_every=FLAGS.log_every,
      sync_bn=FLAGS.sync_bn, dtype=FLAGS.dtype, augment=FLAGS.augment, data_workers=FLAGS.data_workers,
      init_checkpoint=FLAGS.init_checkpoint, progress_bar=FLAGS.progress_bar, **recipe_kwargs_from_flags())


def recipe_kwargs_from_flags() -> dict:
  """The recipe fields of ClassifyConfig (research/train/recipes.py) from their flags."""
  try:
    boundaries = tuple(float(b) for b in FLAGS.step_boundaries)
  except ValueError:
    raise ValueError(f"--step_boundaries must be numbers, got {FLAGS.step_boundaries}") from None
  return dict(lr_scaling=FLAGS.lr_scaling, base_batch_size=FLAGS.base_batch_size, warmup_init=FLAGS.warmup_init,
              zero_init_residual=FLAGS.zero_init_residual, freeze_bn_last_steps=FLAGS.freeze_bn_last_steps,
              temperature=FLAGS.temperature, center_loss_weight=FLAGS.center_loss_weight,
              center_loss_alpha=FLAGS.center_loss_alpha, num_classes_subset=FLAGS.num_classes_subset,
              step_boundaries=boundaries, onecycle_pct_start=FLAGS.onecycle_pct_start,
              num_devices=FLAGS.num_devices)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  from research.train.classify import train_and_evaluate
  with common.clean_errors():
    cfg = config_from_flags()
    results = train_and_evaluate(cfg, FLAGS.workdir)
  common.print_summary(results, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
