"""One definition per setting: config dataclass fields <-> absl flags (experiments.common.define_flags /
config_from_flags), and every experiments/configs/*.flags file parses with its experiment's flags (no runs)."""

from __future__ import annotations

import dataclasses
import glob
import importlib
import json
import os

import pytest
from absl import flags

from experiments import common
from research.configs import help_of, setting
from research.methods.classical.experiment import ClassicalConfig
from research.methods.depth_sr_experiment import DepthSRConfig
from research.methods.gcn_experiment import GCNConfig
from research.methods.glmnet_experiment import GLMNetConfig
from research.methods.large_minibatch import LargeMinibatchConfig
from research.methods.line_experiment import LineConfig
from research.methods.one_shot_experiment import OneShotConfig
from research.methods.segflow_experiment import SegFlowConfig
from research.methods.super_convergence import SuperConvergenceConfig
from research.methods.tcc_experiment import TCCConfig
from research.methods.task2vec.experiment import Task2VecConfig
from research.methods.task2vec.tasks import SuiteConfig
from research.methods.wrn_blocks import WRNBlocksConfig
from research.train.classify import ClassifyConfig
from research.train.detection import DetectionConfig
from research.train.segmentation import SegmentationConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = [ClassifyConfig, SuperConvergenceConfig, LargeMinibatchConfig, WRNBlocksConfig, Task2VecConfig, SuiteConfig,
           DetectionConfig, ClassicalConfig, GCNConfig, LineConfig, GLMNetConfig,
           TCCConfig, SegmentationConfig, SegFlowConfig, DepthSRConfig, OneShotConfig]
EXPERIMENTS = ("classify", "super_convergence", "large_minibatch", "wrn_blocks", "task2vec", "mask_rcnn",
               "faster_rcnn", "deformable", "rfcn", "classical", "gcn", "line", "glmnet", "tcc", "segmentation",
               "segflow", "depth_sr", "one_shot_segmentation", "gan", "vae", "edit", "pqnet", "fasttext", "tener",
               "rnn_cells", "captioning", "audio_tagging", "voice_face", "doctor2vec")


def _parsed(config_cls, *args, **kw) -> flags.FlagValues:
  fv = flags.FlagValues()
  common.define_flags(config_cls, flag_values=fv, **kw)
  fv(["prog", *args])
  return fv


def _field_default(f: dataclasses.Field):
  return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _flag_form(value):
  """A field default as the flag holds it (JSON text for dicts, a list of strings for tuples)."""
  if isinstance(value, dict):
    return json.dumps(value)
  if isinstance(value, tuple):
    return [str(v) for v in value]
  return value


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_help(config_cls):
  for f in dataclasses.fields(config_cls):
    assert isinstance(f.metadata.get("help"), str) and f.metadata["help"].strip(), f"{config_cls.__name__}.{f.name}"


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_define_flags_one_flag_per_field_with_its_default_and_help(config_cls):
  fv = _parsed(config_cls)
  for f in dataclasses.fields(config_cls):
    if not f.metadata.get("flag", True):
      assert f.name not in fv, f.name
      continue
    assert f.name in fv, f.name
    assert fv[f.name].default == _flag_form(_field_default(f)), f.name
    assert fv[f.name].help.endswith(help_of(config_cls, f.name)), f.name  # enum flags: "<a|b>: help"
    if f.metadata.get("choices") and hasattr(fv[f.name].parser, "enum_values"):
      assert fv[f.name].parser.enum_values == list(f.metadata["choices"])
    elif f.metadata.get("choices"):  # a list flag: each element is checked against the choices when parsed
      with pytest.raises(ValueError, match=f"--{f.name}"):
        common.config_from_flags(config_cls, flag_values=_parsed(config_cls, f"--{f.name}=not_a_choice"))
  assert common.config_from_flags(config_cls, flag_values=fv) == config_cls()  # no flags given: the defaults
  assert {fl.name for fl in fv.get_flags_for_module(__name__)} == {
      f.name for f in dataclasses.fields(config_cls) if f.metadata.get("flag", True)}  # listed under the caller


def test_classify_config_from_flags():
  fv = _parsed(ClassifyConfig, "--step_boundaries=0.2,0.6", '--model_kwargs={"width":8}', "--dtype=bfloat16")
  cfg = common.config_from_flags(ClassifyConfig, flag_values=fv)
  assert cfg == dataclasses.replace(ClassifyConfig(), step_boundaries=(0.2, 0.6), model_kwargs={"width": 8},
                                    dtype="bfloat16")
  assert isinstance(cfg.step_boundaries, tuple)
  with pytest.raises(flags.IllegalFlagValueError):  # choices are enforced when the flags are parsed
    _parsed(ClassifyConfig, "--dtype=float64")


@pytest.mark.parametrize("config_cls,arg,message", [
    (ClassifyConfig, "--step_boundaries=0.5,x", r"--step_boundaries must be numbers, got \['0.5', 'x'\]"),
    (SuperConvergenceConfig, "--onecycle_steps=100,1.5", "--onecycle_steps must be integers"),
    (SuperConvergenceConfig, "--step_extra_lrs=a", "--step_extra_lrs must be numbers"),
    (LargeMinibatchConfig, "--batch_sizes=32,big", "--batch_sizes must be integers"),
    (ClassifyConfig, "--model_kwargs={bad", "--model_kwargs is not valid JSON"),
    (ClassifyConfig, "--model_kwargs=[8]", "--model_kwargs must be a JSON object"),
    (SuperConvergenceConfig, "--onecycle_steps=", "--onecycle_steps must be one or more"),  # __post_init__
])
def test_bad_values_raise_naming_the_flag(config_cls, arg, message):
  fv = _parsed(config_cls, arg)
  with pytest.raises(ValueError, match=message):
    common.config_from_flags(config_cls, flag_values=fv)


def test_defaults_override_and_skip():
  fv = _parsed(ClassifyConfig, skip=("progress_bar",), defaults={"num_steps": 7, "step_boundaries": (0.1,)})
  assert "progress_bar" not in fv and fv["num_steps"].default == 7 and fv.step_boundaries == ["0.1"]
  cfg = common.config_from_flags(ClassifyConfig, flag_values=fv, model="resnet18")
  assert (cfg.num_steps, cfg.step_boundaries, cfg.model, cfg.progress_bar) == (7, (0.1,), "resnet18", True)
  with pytest.raises(ValueError, match="no such field"):
    common.define_flags(ClassifyConfig, flag_values=flags.FlagValues(), skip=("lr",))


def test_shared_flag_names_do_not_clash_and_keep_each_configs_defaults():
  """``seed``, ``model``, ... are fields of several configs: defined once, read by each; unset -> own default."""
  fv = flags.FlagValues()
  common.define_flags(ClassifyConfig, flag_values=fv)
  common.define_flags(SuperConvergenceConfig, flag_values=fv)  # no DuplicateFlagError
  fv(["prog"])
  assert common.config_from_flags(ClassifyConfig, flag_values=fv).model == "wrn16_4"
  sc = common.config_from_flags(SuperConvergenceConfig, flag_values=fv)
  assert (sc.model, sc.model_kwargs, sc.batch_size) == ("resnet18", {"width": 16}, 128)
  fv(["prog", "--seed=3", "--model=wrn10_1", '--model_kwargs={"width": 4}'])
  for cls in (ClassifyConfig, SuperConvergenceConfig):
    cfg = common.config_from_flags(cls, flag_values=fv)
    assert (cfg.seed, cfg.model, cfg.model_kwargs) == (3, "wrn10_1", {"width": 4})


def test_declaration_errors():
  @dataclasses.dataclass
  class NoHelp:
    x: int = 1

  @dataclasses.dataclass
  class Odd:
    x: list[int] = setting([1], "A list.")
    y: set = setting(None, "No flag for this.", flag=False)

  with pytest.raises(TypeError, match="NoHelp.x has no help text"):
    common.define_flags(NoHelp, flag_values=flags.FlagValues())
  with pytest.raises(TypeError, match="Odd.x: no flag type"):
    common.define_flags(Odd, flag_values=flags.FlagValues())
  fv = flags.FlagValues()
  common.define_flags(Odd, flag_values=fv, skip=("x",))
  assert "y" not in fv
  with pytest.raises(RuntimeError, match="call define_flags"):
    common.config_from_flags(NoHelp, flag_values=fv)


def _experiment_of(flagfile: str) -> str:
  name = os.path.basename(flagfile)
  return next(e for e in EXPERIMENTS if name == f"{e}.flags" or name.startswith(f"{e}_"))


@pytest.mark.parametrize("flagfile", sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.flags"))),
                         ids=os.path.basename)
def test_flagfiles_parse_with_their_experiments_flags(flagfile):
  """Parse only (no run): every line is a flag of the experiment, and its config builds (checks included)."""
  module = importlib.import_module(f"experiments.{_experiment_of(flagfile)}")  # imports of all 5 coexist
  fv = flags.FlagValues()
  module.define_flags(fv)
  fv(["prog", f"--flagfile={flagfile}"])
  cfg = module.config_from_flags(fv)
  given = {}
  for line in open(flagfile):
    if line.startswith("--"):
      k, eq, v = line.strip()[2:].partition("=")
      given[k] = v if eq else "true"
  assert given and all(not fv[k].using_default_value for k in given)
  workdir = common.config_from_flags(module.ExperimentFlags, flag_values=fv).workdir
  assert workdir == given.pop("workdir")
  for k, v in given.items():
    owner = next((c for c in (cfg, getattr(cfg, "suite", None), module.ExperimentFlags())
                  if c is not None and k in {f.name for f in dataclasses.fields(c)}), None)
    if owner is module.ExperimentFlags or isinstance(owner, module.ExperimentFlags):
      continue  # e.g. --num_devices of experiments.large_minibatch
    assert owner is not None, k
    value = getattr(owner, k)
    if isinstance(value, tuple):
      assert [str(x) for x in value] == [str(type(x)(s)) for x, s in zip(value, v.split(","))], k
    elif isinstance(value, dict):
      assert value == json.loads(v), k
    elif isinstance(value, bool):
      assert value == (v == "true"), k
    else:
      assert value == type(value)(v), k
