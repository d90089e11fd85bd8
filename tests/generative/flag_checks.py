"""Shared check of the generative experiments' bad-flag errors."""

import importlib
import re

import pytest
from absl import flags


def check_flag_error(experiment: str, args: list[str], message: str) -> None:
  """``python -m experiments.<experiment> ARGS`` fails with one error naming the flag: absl's own choices check, or
  a ``ValueError`` containing ``message`` (literally) from the experiment's config validation."""
  exp = importlib.import_module(f"experiments.{experiment}")
  fv = flags.FlagValues()
  exp.define_flags(fv)
  try:
    fv(["prog", *args])
  except flags.IllegalFlagValueError as e:  # absl's own enum check (choices)
    assert message.strip("-").split("=")[0] in str(e)
    return
  with pytest.raises(ValueError, match=re.escape(message)):
    exp.config_from_flags(fv)
