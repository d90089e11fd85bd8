"""One definition per setting: dataclass fields that carry their own help text and choices.

A run configuration is a dataclass whose fields are declared with ``setting(default, help, choices=...)``;
``experiments.common.define_flags(Config)`` turns every field into an absl flag of the same name, type, default
and help, and ``experiments.common.config_from_flags(Config)`` builds the dataclass back from the parsed flags.
So a setting is written once (here), flagfiles keep working (``--lr=...``), and library users construct the
same dataclass in Python.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence


def setting(default: Any, help: str, *, choices: Sequence[str] | None = None, flag: bool = True) -> Any:  # noqa: A002
  """A dataclass field with ``help`` (and allowed ``choices``) in its metadata; mutable defaults are copied.

  ``flag=False``: library-only field (not exposed as a command-line flag)."""
  meta = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag}
  if isinstance(default, (dict, list)):
    return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


def help_of(cls, name: str) -> str:
  return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def to_dict(cfg) -> dict[str, Any]:
  """JSON-friendly dict of a config (tuples become lists)."""
  return dataclasses.asdict(cfg)
