r"""Supervised classification on any registered model and TFDS dataset (offline default: ``shapes``).

  python -m experiments.classify --flagfile=experiments/configs/classify_smoke.flags
  python -m experiments.classify --flagfile=experiments/configs/classify_shapes.flags --workdir=/tmp/wrn

Resumes automatically from ``--workdir``; writes ``results.json``, ``metrics.jsonl``, ``tb/``.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

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


def config_from_flags():
  from research.train.classify import ClassifyConfig
  try:
    model_kwargs = json.loads(FLAGS.model_kwargs)
  except json.JSONDecodeError as e:
    raise ValueError(f"--model_kwargs is not valid JSON ({e}): {FLAGS.model_kwargs!r}") from None
  if not isinstance(model_kwargs, dict):
    raise ValueError(f"--model_kwargs must be a JSON object, got {FLAGS.model_kwargs!r}")
  return ClassifyConfig(
      model=FLAGS.model, model_kwargs=model_kwargs, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      num_steps=FLAGS.num_steps, batch_size=FLAGS.batch_size, eval_batch_size=FLAGS.eval_batch_size,
      learning_rate=FLAGS.learning_rate, optimizer=FLAGS.optimizer, momentum=FLAGS.momentum,
      schedule=FLAGS.schedule, warmup_steps=FLAGS.warmup_steps, weight_decay=FLAGS.weight_decay,
      decay_bn_and_bias=FLAGS.decay_bn_and_bias, label_smoothing=FLAGS.label_smoothing, loss=FLAGS.loss,
      grad_clip_norm=FLAGS.grad_clip_norm, seed=FLAGS.seed, eval_every=FLAGS.eval_every,
      checkpoint_every=FLAGS.checkpoint_every, keep_checkpoints=FLAGS.keep_checkpoints, log_every=FLAGS.log_every,
      sync_bn=FLAGS.sync_bn, dtype=FLAGS.dtype, augment=FLAGS.augment, data_workers=FLAGS.data_workers,
      init_checkpoint=FLAGS.init_checkpoint, progress_bar=FLAGS.progress_bar)


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
