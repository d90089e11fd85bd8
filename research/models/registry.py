"""Model registry: ``create(name, **kw)`` returns a linen module; ``names()`` lists them.

Factories are registered by exact name (``register``) or by a name pattern such as
``wrn{depth}_{k}`` (``register_pattern``), so ``create("wrn40_4")`` works without listing every depth.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable

import flax.linen as nn

Factory = Callable[..., nn.Module]

_EXACT: dict[str, Factory] = {}
_FAMILY: dict[str, str] = {}
# "dense": dense predictors other than semantic segmentation (SegFlow, one-shot segmentation, depth super-resolution)
FAMILIES = ("classification", "detection", "segmentation", "dense", "pose", "generative", "sequence", "graph")
_PATTERNS: list[tuple[re.Pattern[str], Callable[..., nn.Module], str]] = []


def register(name: str, family: str = "classification") -> Callable[[Factory], Factory]:
  """Decorator registering ``factory(**kw) -> nn.Module`` under ``name`` in a model ``family``."""
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; choose one of {FAMILIES}")

  def deco(factory: Factory) -> Factory:
    if name in _EXACT:
      raise ValueError(f"model {name!r} is already registered")
    _EXACT[name] = factory
    _FAMILY[name] = family
    return factory

  return deco


def register_pattern(pattern: str, example: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
  """Registers ``factory(match, **kw)`` for every name matching the regex ``pattern``."""

  def deco(factory):
    _PATTERNS.append((re.compile(pattern), factory, example))
    return factory

  return deco


def names(family: str | None = "classification") -> list[str]:
  """Registered model names of one family (default: the classification backbones; ``None``: every family).
  Pattern families are listed by their registered members."""
  if family is not None and family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; choose one of {FAMILIES}")
  return sorted(n for n in _EXACT if family is None or _FAMILY[n] == family)


def create(name: str, /, **kwargs) -> nn.Module:
  """Builds the model ``name``; ``kwargs`` go to its factory (``num_classes``, ``dtype``, ...)."""
  if name in _EXACT:
    return _EXACT[name](**kwargs)
  for pattern, factory, _ in _PATTERNS:
    m = pattern.fullmatch(name)
    if m:
      return factory(m, **kwargs)
  close = difflib.get_close_matches(name, names(None), n=3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  families = ", ".join(ex for _, _, ex in _PATTERNS)
  raise ValueError(
      f"unknown model {name!r}.{hint} Known models: research.models.names(family) ({len(_EXACT)} names in {len(set(_FAMILY.values()))} families); "
      f"name families: {families}."
  )
