"""Loading and registering the compiled XLA FFI kernels (`_research_kernels`, built from `research/ops/csrc/`).

The extension is a top-level module installed next to the `research` package by scikit-build-core, so it is
importable whether `research` itself comes from the source tree or from site-packages. Everything in
`research.ops` works without it: `impl="auto"` then falls back to the pure-JAX references and only
`impl="ffi"` fails, with the import error in the message.
"""

from __future__ import annotations

import threading

import jax

try:  # pragma: no cover - depends on whether the package was built
  import _research_kernels as _ext
  _IMPORT_ERROR: Exception | None = None
except ImportError as e:  # pragma: no cover
  _ext = None
  _IMPORT_ERROR = e

IMPLS = ("auto", "reference", "ffi")
_PLATFORM = "cpu"  # the only platform the C++ kernels are registered for
_lock = threading.Lock()
_registered = False


def _register() -> None:
  global _registered
  with _lock:
    if _registered:
      return
    for name, capsule in _ext.registrations().items():
      jax.ffi.register_ffi_target(name, capsule, platform=_PLATFORM)
    _registered = True


def ffi_available() -> bool:
  """True when the compiled kernels imported (they run on the CPU backend only)."""
  return _ext is not None


def use_ffi(impl: str, op: str) -> bool:
  """Resolves ``impl`` ("auto" | "reference" | "ffi") for ``op``; registers the targets on first use.

  "auto" picks the C++ kernel when the extension is importable and the default backend is the CPU,
  else the pure-JAX reference. "ffi" raises a clear error when the kernel cannot be used.
  """
  if impl not in IMPLS:
    raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
  if impl == "reference":
    return False
  if _ext is None:
    if impl == "ffi":
      raise RuntimeError(
          f"{op}(impl='ffi'): the compiled extension `_research_kernels` is not importable "
          f"({_IMPORT_ERROR}). Build it with `pip install -e .` (see BUILD.md) or use impl='reference'.")
    return False
  if impl == "auto" and jax.default_backend() != _PLATFORM:
    return False
  _register()
  return True


def target(name: str) -> str:
  """Full FFI target name as registered by the extension."""
  return f"research_{name}"
