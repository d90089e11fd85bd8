r"""Task2Vec (Achille et al., ICCV 2019): embed a suite of tasks with the FIM of a probe network, compare the
distances with the known taxonomy, and select experts with d_sym / d_asym.

  python -m experiments.task2vec                       # offline default on `shapes` (< 10 min on 2 CPU cores)
  python -m experiments.task2vec --flagfile=experiments/configs/task2vec_smoke.flags
  python -m experiments.task2vec --dataset=cifar100 --data_dir=DIR --workdir=/tmp/t2v_c100

Writes ``embeddings.npz``, ``distances.csv``, ``summary.json`` and PNG figures to ``--workdir``; the trained
probe is kept in ``--workdir/probe`` and reused on re-run.
"""

from __future__ import annotations

import json

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "shapes", "Dataset with 'label' and 'coarse_label': shapes (offline) or cifar100.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
flags.DEFINE_string("workdir", "/tmp/research/task2vec", "Output directory (probe checkpoint reused on re-run).")
flags.DEFINE_string("probe", "cifar_resnet18_w16", "Probe network: cifar_resnet{18,34}_w{width} or a registry name.")
flags.DEFINE_string("probe_checkpoint", None, "Load the probe from this orbax checkpoint instead of training it.")
flags.DEFINE_enum("probe_label", "coarse", ["coarse", "fine"], "Source task of the probe (train split labels).")
flags.DEFINE_integer("probe_steps", 250, "Probe training steps on the source task.")
flags.DEFINE_integer("probe_batch_size", 64, "Probe training batch size.")
flags.DEFINE_float("probe_learning_rate", 0.1, "Probe peak learning rate (Nesterov SGD, cosine).")
flags.DEFINE_integer("start_stage", 4, "FIM on stages >= start_stage; earlier stages are cached once (skip_layers).")
flags.DEFINE_integer("train_per_class", 40, "Pooled train images per fine class.")
flags.DEFINE_integer("test_per_class", 20, "Pooled test images per fine class.")
flags.DEFINE_integer("max_samples", 400, "Max samples per task for the FIM (class-balanced subsample).")
flags.DEFINE_enum("method", "montecarlo", ["montecarlo", "variational"], "FIM estimator.")
flags.DEFINE_enum("estimator", "per_example", ["per_example", "batch"],
                  "Monte Carlo: exact per-example diagonal (vmap) or the reference's squared batch gradient.")
flags.DEFINE_integer("fisher_epochs", 1, "Passes over a task's data for the FIM.")
flags.DEFINE_integer("fisher_batch_size", 32, "FIM batch size (divisible by the device count).")
flags.DEFINE_float("beta", 1e-7, "Variational FIM: weight of the KL term.")
flags.DEFINE_float("variational_learning_rate", 1e-2, "Variational FIM: Adam learning rate of the log-variances.")
flags.DEFINE_float("head_learning_rate", 4e-4, "Head fit: Adam learning rate (reference 4e-4).")
flags.DEFINE_float("head_weight_decay", 1e-4, "Head fit: L2 (reference 1e-4).")
flags.DEFINE_integer("head_epochs", 10, "Head fit: epochs (reference 10).")
flags.DEFINE_integer("head_min_steps", 0, "Head fit: at least this many Adam steps (small tasks).")
flags.DEFINE_integer("num_random", 4, "Random fine-class subset tasks.")
flags.DEFINE_integer("num_supers", 5, "Super tasks (groups of superclasses); their fine versions are experts.")
flags.DEFINE_integer("relabel_coarse", 2, "Super tasks that also get a coarse-labelled twin (same images).")
flags.DEFINE_integer("ladder_bases", 2, "Family tasks with a difficulty ladder (noise, fewer samples, random).")
flags.DEFINE_integer("max_families", 0, "Use only the first N superclasses as family tasks (0 = all).")
flags.DEFINE_integer("target_samples", 10, "Train images per class of the few-shot model-selection targets.")
flags.DEFINE_integer("expert_steps", 60, "Fine-tuning steps per expert (probe tail + head).")
flags.DEFINE_integer("expert_batch_size", 64, "Expert fine-tuning batch size.")
flags.DEFINE_float("expert_learning_rate", 0.05, "Expert fine-tuning peak learning rate.")
flags.DEFINE_integer("transfer_head_steps", 300, "Min Adam steps of the linear head fitted on each expert.")
flags.DEFINE_float("alpha", 0.15, "α of d_asym(source -> target) = d_sym - α d_sym(source, trivial).")
flags.DEFINE_list("distances", ["cosine", "normalized_cosine", "correlation", "kl", "jsd"],
                  "Distance matrices written to distances.csv.")
flags.DEFINE_integer("seed", 0, "Seed for the pool, task suite, probe and Fisher sampling.")
flags.DEFINE_bool("plots", True, "Write PNG figures.")


def config_from_flags():
  from research.methods.task2vec import experiment, tasks
  suite = tasks.SuiteConfig(num_random=FLAGS.num_random, num_supers=FLAGS.num_supers,
                            relabel_coarse=FLAGS.relabel_coarse, ladder_bases=FLAGS.ladder_bases,
                            target_samples=FLAGS.target_samples, max_families=FLAGS.max_families, seed=FLAGS.seed)
  return experiment.Task2VecConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, probe=FLAGS.probe, probe_checkpoint=FLAGS.probe_checkpoint,
      probe_label=FLAGS.probe_label, probe_steps=FLAGS.probe_steps, probe_batch_size=FLAGS.probe_batch_size,
      probe_learning_rate=FLAGS.probe_learning_rate, start_stage=FLAGS.start_stage,
      train_per_class=FLAGS.train_per_class, test_per_class=FLAGS.test_per_class, max_samples=FLAGS.max_samples,
      method=FLAGS.method, estimator=FLAGS.estimator, fisher_epochs=FLAGS.fisher_epochs,
      fisher_batch_size=FLAGS.fisher_batch_size, beta=FLAGS.beta,
      variational_learning_rate=FLAGS.variational_learning_rate, head_learning_rate=FLAGS.head_learning_rate,
      head_weight_decay=FLAGS.head_weight_decay, head_epochs=FLAGS.head_epochs, head_min_steps=FLAGS.head_min_steps,
      suite=suite, expert_steps=FLAGS.expert_steps, expert_batch_size=FLAGS.expert_batch_size,
      expert_learning_rate=FLAGS.expert_learning_rate, transfer_head_steps=FLAGS.transfer_head_steps,
      alpha=FLAGS.alpha, distances=tuple(FLAGS.distances), seed=FLAGS.seed, plots=FLAGS.plots)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  from research.methods.task2vec import experiment
  with common.clean_errors():
    summary = experiment.run(config_from_flags(), FLAGS.workdir)
  ms = summary["model_selection"]
  print(json.dumps({
      "spearman_taxonomy (task2vec d_sym)": summary["spearman_taxonomy"],
      "spearman_taxonomy (domain baseline)": summary["spearman_taxonomy_domain"],
      "norm_vs_error_spearman": summary["norm_vs_error_spearman"],
      "model_selection relative error increase over oracle": ms["relative_error_increase"],
      "timings_seconds": summary["timings_seconds"],
  }, indent=2))
  print(f"results: {FLAGS.workdir}/summary.json (+ embeddings.npz, distances.csv, *.png)")


if __name__ == "__main__":
  app.run(main)
