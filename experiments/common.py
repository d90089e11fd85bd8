"""Shared plumbing for experiment entry points: distributed init, clean error exits, summaries.

Multi-process flags (every ``experiments.*`` entry point gets them; see ``launch/README.md``):
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` start ``jax.distributed`` explicitly;
without them the layout comes from ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``
or, with ``--distributed_auto_detect`` (default on), from SLURM / Cloud TPU / Kubernetes via JAX's cluster
detection; otherwise the run is single-process.

Run configurations: ``define_flags(Config)`` defines one flag per field of a dataclass declared with
``research.configs.setting(default, help, choices=...)`` and ``config_from_flags(Config)`` builds it back, so each
setting is written once (the field) and flagfiles keep using the field names (``--learning_rate=0.1``).
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import json
import logging as pylogging
import os
import sys
import types
import typing
import warnings
from typing import Any, Callable, Mapping, Sequence

from absl import flags, logging

FLAGS = flags.FLAGS

flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0's jax.distributed coordinator (same on every process).")
flags.DEFINE_integer("num_processes", None, "Total number of JAX processes (multi-host runs).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, --num_processes).")
flags.DEFINE_bool("distributed_auto_detect", True,
                  "Fill in a missing multi-process layout from SLURM / Cloud TPU / Open MPI / Kubernetes "
                  "(JAX's cluster detection).")
flags.DEFINE_string("cluster_detection_method", None,
                    "Force one JAX cluster detection method ('slurm', 'gcetpu', 'gketpu', 'ompi', 'mpi4py', 'k8s').")
flags.DEFINE_list("local_device_ids", None, "Restrict this process to these local accelerator ids (e.g. 0).")
flags.DEFINE_integer("distributed_timeout", 300,
                     "Seconds to wait for all processes to connect at start-up and at the final barrier.")
flags.DEFINE_integer("heartbeat_timeout", 60,
                     "Seconds without a heartbeat after which a peer counts as dead and every process exits "
                     "with an error.")


def setup() -> None:
  """Quiet third-party logs; initialise jax.distributed when multi-process flags/env ask for it.

  In a multi-process run it also installs fail-fast error handling (an exception in one process ends it
  at once with exit status 1 so its peers notice) and a final barrier at successful exit.
  """
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  logging.set_verbosity(logging.INFO)
  for name in ("absl", "orbax", "jax._src.xla_bridge", "tensorflow_datasets"):
    pylogging.getLogger(name).setLevel(pylogging.WARNING)
  from research import distributed
  started = distributed.initialize(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
      local_device_ids=[int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids else None,
      auto_detect=FLAGS.distributed_auto_detect, cluster_detection_method=FLAGS.cluster_detection_method,
      initialization_timeout=FLAGS.distributed_timeout, heartbeat_timeout=FLAGS.heartbeat_timeout)
  if started:
    import jax
    distributed.register_final_barrier(FLAGS.distributed_timeout)
    if jax.process_index() != 0:  # logs on process 0 only; warnings and errors from every process
      logging.set_verbosity(logging.WARNING)


def _is_multiprocess() -> bool:
  if "research.distributed" not in sys.modules:
    return False
  from research import distributed
  return distributed.is_multiprocess()


@contextlib.contextmanager
def clean_errors():
  """User errors (ValueError, FloatingPointError, RuntimeError from our checks) -> one message, exit 1.

  In a multi-process run the process exits at once (no graceful shutdown waiting for peers that are
  blocked in a collective on it), so the whole job fails fast.
  """
  try:
    yield
  except (ValueError, FloatingPointError) as e:
    if _is_multiprocess():
      from research import distributed
      distributed.abort(f"error: {e}")
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def print_summary(results: dict, workdir: str) -> None:
  """Prints the headline results (process 0 only in a multi-process run)."""
  if _is_multiprocess():
    import jax
    if jax.process_index() != 0:
      return
  keys = [k for k in ("model", "dataset", "step", "eval_accuracy", "eval_loss", "final_train_loss", "num_params",
                      "params_sha256", "wall_seconds") if k in results]
  print(json.dumps({k: results[k] for k in keys}, indent=2))
  print(f"results: {workdir}/results.json")


def run_summary_experiment(argv, build_config: Callable[[], Any], experiment_flags: type,
                           run: Callable[[Any, str], dict]) -> None:
  """The ``main`` of an experiment whose library driver is ``run(config, workdir) -> summary``: reject stray
  arguments, ``setup()``, ``build_config()`` (the module's config from the flags) and ``run`` under
  ``clean_errors()`` (one ``error:`` line for bad input), then print ``workdir/summary.md``.
  ``experiment_flags`` is the module's dataclass holding ``workdir``."""
  from absl import app
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup()
  with clean_errors():
    config = build_config()
    workdir = config_from_flags(experiment_flags).workdir
    summary = run(config, workdir)
  print_markdown_summary(workdir, summary)


def print_markdown_summary(workdir: str, summary: dict, extra: str = "") -> None:
  """Prints ``workdir/summary.md`` and a results line with the wall time (process 0 only in multi-process runs)."""
  if _is_multiprocess():
    import jax
    if jax.process_index() != 0:
      return
  with open(os.path.join(workdir, "summary.md")) as f:
    print(f.read())
  print(f"results: {workdir}/summary.json  {extra}wall {summary['wall_seconds']:.0f} s")


# ------------------------------------------------------------------------------------------------------------------
# Run configurations as flags: one definition per setting (``research.configs.setting``), see ``define_flags``.

_LIST_WORDS = {int: "integers", float: "numbers", str: "strings"}
_SCALAR_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def parse_json_dict(name: str, text: str | None) -> dict | None:
  """``text``, the value of flag ``--name``, as a JSON object (None stays None); a ValueError naming the flag."""
  if text is None:
    return None
  try:
    value = json.loads(text)
  except (json.JSONDecodeError, TypeError) as e:
    raise ValueError(f"--{name} is not valid JSON ({e}): {text!r}") from None
  if not isinstance(value, dict):
    raise ValueError(f"--{name} must be a JSON object, got {text!r}")
  return value


def parse_list(name: str, values: Sequence[Any] | str | None, element_type: type,
               choices: Sequence[str] | None = None) -> tuple | None:
  """The elements of list flag ``--name`` as a tuple of ``element_type``; a ValueError naming the flag."""
  if values is None:
    return None
  if isinstance(values, str):  # a string flag of another module that shares the name
    values = [v.strip() for v in values.split(",") if v.strip()]
  try:
    out = tuple(element_type(v) for v in values)
  except (TypeError, ValueError):
    raise ValueError(f"--{name} must be {_LIST_WORDS[element_type]}, got {list(values)}") from None
  for v in out:
    if choices and v not in choices:
      raise ValueError(f"--{name}: unknown {v!r}; choose from {tuple(choices)}")
  return out


def _parse_scalar(name: str, value: Any, typ: type, choices: Sequence[str] | None = None) -> Any:
  if value is None:
    return None
  if not (isinstance(value, typ) and not (typ is int and isinstance(value, bool))):
    try:
      if typ is bool and isinstance(value, str):
        value = {"true": True, "1": True, "false": False, "0": False}[value.strip().lower()]
      else:
        value = typ(value)
    except (KeyError, TypeError, ValueError):
      raise ValueError(f"--{name} must be {_SCALAR_WORDS[typ]}, got {value!r}") from None
  if choices and value not in choices:
    raise ValueError(f"--{name}={value!r}; choose one of {tuple(choices)}")
  return value


def json_dict_flag(name: str) -> dict:
  """The JSON object in string flag ``--name`` (e.g. ``--model_kwargs``); a clear ValueError otherwise."""
  return parse_json_dict(name, getattr(FLAGS, name))


def int_list_flag(name: str) -> tuple[int, ...]:
  """The integers of list flag ``--name`` (e.g. ``--batch_sizes=32,128``); a clear ValueError otherwise."""
  return parse_list(name, getattr(FLAGS, name), int)


def float_list_flag(name: str) -> tuple[float, ...]:
  """The numbers of list flag ``--name`` (e.g. ``--step_extra_lrs=0.1,0``); a clear ValueError otherwise."""
  return parse_list(name, getattr(FLAGS, name), float)


@dataclasses.dataclass(frozen=True)
class _FlagKind:
  """How one field type becomes a flag: ``define(name, flag_default, help, flag_values, module_name)``, the
  field default in flag form, and ``parse(name, flag_value) -> field value`` (ValueError naming the flag)."""
  define: Callable[..., Any]
  to_flag: Callable[[Any], Any]
  parse: Callable[[str, Any], Any]


def _flag_kind(config_cls: type, name: str, annotation: Any, choices: Sequence[str] | None) -> _FlagKind:
  """The flag kind of a field annotated ``annotation``: str (enum with choices), int, float, bool, ``X | None``,
  ``tuple[int|float|str, ...]`` (a comma-separated list) or a dict/Mapping (a JSON object in a string flag)."""
  ident = lambda v: v  # noqa: E731
  origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
    annotation = next(a for a in args if a is not type(None))  # X | None: X's flag with a None default
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
  if annotation is bool:
    return _FlagKind(lambda n, d, h, fv, m: flags.DEFINE_bool(n, d, h, flag_values=fv, module_name=m), ident,
                     lambda n, v: _parse_scalar(n, v, bool))
  if annotation is int:
    return _FlagKind(lambda n, d, h, fv, m: flags.DEFINE_integer(n, d, h, flag_values=fv, module_name=m), ident,
                     lambda n, v: _parse_scalar(n, v, int))
  if annotation is float:
    return _FlagKind(lambda n, d, h, fv, m: flags.DEFINE_float(n, d, h, flag_values=fv, module_name=m), ident,
                     lambda n, v: _parse_scalar(n, v, float))
  if annotation is str and choices:
    return _FlagKind(lambda n, d, h, fv, m: flags.DEFINE_enum(n, d, list(choices), h, flag_values=fv, module_name=m),
                     ident, lambda n, v: _parse_scalar(n, v, str, choices))
  if annotation is str:
    return _FlagKind(lambda n, d, h, fv, m: flags.DEFINE_string(n, d, h, flag_values=fv, module_name=m), ident,
                     lambda n, v: _parse_scalar(n, v, str))
  if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _LIST_WORDS:
    element = args[0]
    return _FlagKind(lambda n, d, h, fv, m: flags.DEFINE_list(n, d, h, flag_values=fv, module_name=m),
                     lambda d: None if d is None else [str(v) for v in d],
                     lambda n, v: parse_list(n, v, element, choices))
  if annotation in (dict, Mapping, collections.abc.Mapping) or origin in (dict, collections.abc.Mapping):
    return _FlagKind(lambda n, d, h, fv, m: flags.DEFINE_string(n, d, h, flag_values=fv, module_name=m),
                     lambda d: None if d is None else json.dumps(dict(d)), parse_json_dict)
  raise TypeError(f"{config_cls.__name__}.{name}: no flag type for {annotation!r}; use str, int, float, bool, "
                  f"X | None, tuple[int|float|str, ...] or a dict, or declare it with setting(..., flag=False)")


@dataclasses.dataclass(frozen=True)
class _FlagSpec:
  parse: Callable[[str, Any], Any]
  default: Any  # the field's default (or define_flags' ``defaults`` entry), typed
  shared: bool  # the flag was already defined (by another module or config) and is reused


# (id(flag_values), config class) -> (flag_values, {field name: spec}) for every define_flags call.
_DEFINED: dict[tuple[int, type], tuple[flags.FlagValues, dict[str, _FlagSpec]]] = {}


def define_flags(config_cls: type, *, skip: Sequence[str] = (), defaults: Mapping[str, Any] | None = None,
                 flag_values: flags.FlagValues | None = None, module_name: str | None = None) -> list[str]:
  """One absl flag per field of dataclass ``config_cls`` declared with ``research.configs.setting``.

  The flag has the field's name and help (``--helpfull``); its default is the field's default, or
  ``defaults[name]`` where an experiment changes it. The flag type follows the field's annotation: ``str``
  (``DEFINE_enum`` when the setting has ``choices``), ``int``, ``float``, ``bool``, ``X | None`` (X's flag with
  default None), ``tuple[float|int|str, ...]`` (``DEFINE_list``, e.g. ``--step_boundaries=0.5,0.75``) and
  ``dict``/``Mapping`` (a string flag holding a JSON object, e.g. ``--model_kwargs='{"width": 8}'``). Fields
  declared with ``setting(..., flag=False)``, fields in ``skip`` and ``init=False`` fields get no flag; a field
  with a flag but no help text is a TypeError (every flag is documented where it is declared).

  Shared names: a flag of that name may already exist in ``flag_values`` (another module or another config
  defined it, e.g. ``seed``). It is then not defined again (no DuplicateFlagError) but read by
  ``config_from_flags``: its value when it was set (command line, flagfile, assignment), else this field's
  own default, so each config keeps its defaults; the ``--help`` text is the first definition's.

  ``flag_values``: where to define them (default ``absl.flags.FLAGS``; tests pass a fresh ``FlagValues()``);
  ``module_name``: the module the flags are listed under in ``--help`` (default: the calling module, as absl's
  own ``DEFINE_*``). Returns the names of the flags of ``config_cls`` (defined or shared).
  """
  fv = FLAGS if flag_values is None else flag_values
  if module_name is None:
    caller = sys._getframe(1).f_globals.get("__name__")
    module_name = sys.argv[0] if caller == "__main__" else caller
  defaults = dict(defaults or {})
  fields = {f.name: f for f in dataclasses.fields(config_cls)}
  unknown = sorted((set(skip) | set(defaults)) - set(fields))
  if unknown:
    raise ValueError(f"define_flags({config_cls.__name__}): no such field(s) {unknown}")
  hints = typing.get_type_hints(config_cls)
  previous = _DEFINED.get((id(fv), config_cls))
  specs: dict[str, _FlagSpec] = {}
  for f in fields.values():
    if not f.init or f.name in skip or not f.metadata.get("flag", True):
      continue
    help_text = f.metadata.get("help")
    if not help_text:
      raise TypeError(f"{config_cls.__name__}.{f.name} has no help text: declare it with "
                      f"research.configs.setting(default, help) (or setting(..., flag=False) for no flag)")
    if f.name in defaults:
      default = defaults[f.name]
    elif f.default is not dataclasses.MISSING:
      default = f.default
    elif f.default_factory is not dataclasses.MISSING:
      default = f.default_factory()
    else:
      raise TypeError(f"{config_cls.__name__}.{f.name} has no default; a flag needs one (pass defaults=)")
    kind = _flag_kind(config_cls, f.name, hints[f.name], f.metadata.get("choices"))
    ours_before = previous is not None and previous[0] is fv and f.name in previous[1] \
        and not previous[1][f.name].shared  # define_flags of this config again (e.g. a re-import)
    shared = f.name in fv and not ours_before
    if f.name not in fv:
      kind.define(f.name, kind.to_flag(default), help_text, fv, module_name)
    specs[f.name] = _FlagSpec(kind.parse, default, shared)
  _DEFINED[(id(fv), config_cls)] = (fv, specs)
  return list(specs)


def config_from_flags(config_cls: type, *, flag_values: flags.FlagValues | None = None, **overrides: Any) -> Any:
  """``config_cls`` built from the parsed flags that ``define_flags(config_cls)`` defined, plus ``overrides``
  (field values that are not flags, or replace them). Values are converted to the fields' types (lists to
  tuples, JSON text to a dict); a ValueError naming the flag if one cannot be (e.g. ``--step_boundaries must
  be numbers, got ['0.5', 'x']``, ``--model_kwargs is not valid JSON``). Fields without a flag keep their
  defaults; the dataclass's own checks (``__post_init__``) run as usual."""
  fv = FLAGS if flag_values is None else flag_values
  entry = _DEFINED.get((id(fv), config_cls))
  if entry is None or entry[0] is not fv:
    raise RuntimeError(f"config_from_flags({config_cls.__name__}): call define_flags({config_cls.__name__}) "
                       f"with the same flag_values first")
  if not fv.is_parsed():
    raise flags.UnparsedFlagAccessError(f"config_from_flags({config_cls.__name__}) before the flags were parsed")
  kwargs = {}
  for name, spec in entry[1].items():
    if name in overrides:
      continue
    flag = fv[name]
    if spec.shared and flag.using_default_value:
      kwargs[name] = dict(spec.default) if isinstance(spec.default, collections.abc.Mapping) else spec.default
    else:
      kwargs[name] = spec.parse(name, flag.value)
  return config_cls(**kwargs, **overrides)
