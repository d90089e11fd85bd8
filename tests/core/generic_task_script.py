"""Subprocess entry point of tests/core/test_generic_tasks.py: trains one generic task with the loop.

    python tests/core/generic_task_script.py --task gan --workdir W --num_steps 12 --checkpoint_every 4 \
        [--sleep_after_step 6]

Writes the loop's ``W/results.json`` and ``W/final.json`` (sha256 of every part of the final TrainState: params,
model_state, opt_state, rng, step). ``--sleep_after_step s``: after step ``s`` (the loop's 1-based count;
``on_step`` runs before that step's checkpoint is written) create ``W/sleeping`` and sleep for an hour, so a test
can SIGKILL the process at a known step -- only if ``W/sleeping`` does not exist yet, so rerunning the same
command finishes the run.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import generic_tasks  # noqa: E402
from research.train import loop as loop_lib  # noqa: E402
from research.train import task as task_lib  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--task", required=True, choices=("gan", "autoencoder"))
  p.add_argument("--workdir", required=True)
  p.add_argument("--num_steps", type=int, default=12)
  p.add_argument("--checkpoint_every", type=int, default=4)
  p.add_argument("--log_every", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--sleep_after_step", type=int, default=0)
  args = p.parse_args(argv)

  task, data, eval_data = generic_tasks.make(args.task, seed=args.seed)

  marker = os.path.join(args.workdir, "sleeping")

  def on_step(step, metrics):
    if step == args.sleep_after_step and not os.path.exists(marker):  # once: a rerun of the command goes on
      with open(marker, "w") as f:
        f.write(str(step))
      time.sleep(3600)
    return False

  config = loop_lib.LoopConfig(num_steps=args.num_steps, seed=args.seed, eval_every=0,
                               checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                               progress_bar=False, tensorboard=False)
  state, results = loop_lib.train(task, data, config=config, mesh=task_lib.make_mesh(), workdir=args.workdir,
                                  eval_data=eval_data, run_config=vars(args),
                                  on_step=on_step)
  final = {f"{k}_sha256": loop_lib.params_sha256(getattr(state, k))
           for k in ("params", "model_state", "opt_state", "rng", "step")}
  final["results"] = results
  with open(os.path.join(args.workdir, "final.json"), "w") as f:
    json.dump(final, f, indent=2, default=float)
  print(json.dumps({k: v for k, v in final.items() if k != "results"}))


if __name__ == "__main__":
  main()
