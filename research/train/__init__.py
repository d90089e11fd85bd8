"""Training: TrainState, per-device steps + data-parallel wrappers, optimizers, checkpoints, metrics."""

from research.train.checkpoint import Checkpointer, load_params, write_json_atomic
from research.train.optim import OPTIMIZERS, SCHEDULES, decay_mask, make_optimizer, make_schedule
from research.train.steps import (DATA_AXIS, TrainState, cross_entropy, create_state, eval_step, global_batch,
                                  init_state, make_mesh, num_params, parallelize, train_step)

__all__ = ["Checkpointer", "load_params", "write_json_atomic", "OPTIMIZERS", "SCHEDULES", "decay_mask",
           "make_optimizer", "make_schedule", "DATA_AXIS", "TrainState", "cross_entropy", "create_state",
           "eval_step", "global_batch", "init_state", "make_mesh", "num_params", "parallelize", "train_step"]
