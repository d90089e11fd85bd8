"""Loading and registering the compiled XLA FFI kernels (`_research_kernels`, built from `research/ops/csrc/`).

The extension is a top-level module installed next to the `research` package by scikit-build-core, so it is
importable whether `research` itself comes from the source tree or from site-packages. Everything in
`research.ops` works without it: `impl="auto"` then falls back to the pure-JAX references and only
`impl="ffi"` fails, with the import error in the message.
"""

from __future__ import annotations

import threading
from typing import Callable

import jax
import numpy as np

try:  # pragma: no cover - depends on whether the package was built
  import _research_kernels as _ext
  _IMPORT_ERROR: Exception | None = None
except ImportError as e:  # pragma: no cover
  _ext = None
  _IMPORT_ERROR = e

IMPLS = ("auto", "reference", "xla", "ffi", "pallas")
_ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")
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


def resolve(impl: str, op: str, dtype, *, ffi_dtypes=None, has_xla: bool = True,
            pallas_probe: Callable[[], bool] | None = None) -> str:
  """Resolves ``impl`` for ``op`` to the path that runs: "reference" | "xla" | "ffi" | "pallas".

  Paths: "reference" is the exactness oracle (pure JAX, any backend); "xla" the accelerator-friendly pure-JAX
  path (gathers / blocked bitmasks; cost independent of the feature-map size); "ffi" the C++ CPU kernel;
  "pallas" the Pallas kernel (Triton on GPU; ``interpret=True`` on CPU, for testing). "auto" takes the C++
  kernel on CPU when the extension imports and the dtype is one it takes, Pallas on GPU when the op has a
  kernel and it compiles there (``pallas_probe``, cached), else "xla". Every misuse raises here, before any
  tracing, with one message naming the op, the backend and the fix.
  """
  if impl not in IMPLS:
    raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
  backend = jax.default_backend()
  dtype = np.dtype(dtype)
  ffi_dtypes = tuple(np.dtype(d) for d in (ffi_dtypes or ()))
  if impl == "reference":
    return "reference"
  if impl == "xla":
    return "xla" if has_xla else "reference"
  if impl == "ffi":
    if _ext is None:
      raise RuntimeError(
          f"{op}(impl='ffi'): the compiled extension `_research_kernels` is not importable "
          f"({_IMPORT_ERROR}). Build it with `pip install -e .` (see BUILD.md) or use impl='auto'.")
    if backend != _PLATFORM:
      raise ValueError(
          f"{op}(impl='ffi'): the C++ kernels run on the CPU backend only, but the default backend is "
          f"{backend!r}. Use impl='auto' (Pallas or XLA path on {backend}) or impl='xla'.")
    if ffi_dtypes and dtype not in ffi_dtypes:
      raise ValueError(f"{op}(impl='ffi'): the C++ kernel takes {', '.join(d.name for d in ffi_dtypes)} "
                       f"inputs, got {dtype.name}. Use impl='xla' or impl='reference' (float64 works there).")
    _register()
    return "ffi"
  if impl == "pallas":
    if pallas_probe is None:
      raise ValueError(f"{op}(impl='pallas'): there is no Pallas kernel for {op}. Use impl='auto' or impl='xla'.")
    if backend == "tpu":
      raise ValueError(f"{op}(impl='pallas'): the Pallas kernels are written for GPU (Triton lowering) and run "
                       f"interpreted on CPU; there is no TPU (Mosaic) kernel. Use impl='auto' (the XLA path).")
    return "pallas"
  # auto
  if backend == _PLATFORM:
    if _ext is not None and (not ffi_dtypes or dtype in ffi_dtypes):
      _register()
      return "ffi"
    return "xla" if has_xla else "reference"
  if backend in _ACCELERATORS and backend != "tpu" and pallas_probe is not None and _probe(op, pallas_probe):
    return "pallas"
  return "xla" if has_xla else "reference"


_PROBES: dict[tuple[str, str], bool] = {}


def _probe(op: str, probe: Callable[[], bool]) -> bool:
  """Whether ``op``'s Pallas kernel compiles on the default backend (tried once per op and backend)."""
  key = (op, jax.default_backend())
  if key not in _PROBES:
    try:
      _PROBES[key] = bool(probe())
    except Exception:  # noqa: BLE001 - any lowering/compile failure means: use the XLA path
      _PROBES[key] = False
  return _PROBES[key]


def target(name: str) -> str:
  """Full FFI target name as registered by the extension."""
  return f"research_{name}"
