"""Shared plumbing of the worked examples: their optional data packages and the headless pyplot."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExampleData(ImportError):
  """An example's data package (scikit-learn / scikit-image) is not installed."""


def data_module(name: str, example: str) -> ModuleType:
  """``importlib.import_module(name)`` (e.g. ``"sklearn.datasets"``, ``"skimage.data"``: the real data these packages
  ship); MissingExampleData naming ``example`` and the install command if the package is absent."""
  try:
    return importlib.import_module(name)
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingExampleData(f"the {example} example reads its data from {name.split('.')[0]}: "
                             f"pip install -e '.[examples]'") from e


def pyplot() -> ModuleType:
  """``matplotlib.pyplot`` on the Agg backend (PNG files, no display needed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt
