"""Training: the ``Task`` protocol, the one generic loop, optimizers, checkpoints, metrics.

A family is a ``Task`` (``research.train.task``); ``research.train.loop.train(task, data, ...)`` trains it.
See ``research/train/README.md``.
"""

from research.train.checkpoint import Checkpointer, load_params, write_json_atomic
from research.train.loop import LoopConfig, evaluate, num_params, params_sha256, train
from research.train.optim import OPTIMIZERS, SCHEDULES, decay_mask, make_optimizer, make_schedule
from research.train.task import (DATA_AXIS, Task, TrainState, apply_optimizer, global_batch, grad_of,
                                 init_train_state, make_mesh, mean_over, norms)

__all__ = ["Checkpointer", "load_params", "write_json_atomic", "LoopConfig", "evaluate", "num_params",
           "params_sha256", "train", "OPTIMIZERS", "SCHEDULES", "decay_mask", "make_optimizer", "make_schedule",
           "DATA_AXIS", "Task", "TrainState", "apply_optimizer", "global_batch", "grad_of", "init_train_state",
           "make_mesh", "mean_over", "norms"]
