"""The model-zoo tool: per-layer table and docs/models.md kept in sync with the registry."""

import os
import re
import subprocess
import sys

import pytest

from research import models
from research.models.profile import layer_table

from test_contract import abstract_variables  # noqa: E402  (shared eval_shape cache)
from test_param_counts import _n  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_layer_table_totals():
  text = layer_table("squeezenet1_1")
  assert text.splitlines()[0] == "squeezenet1_1 @ 224x224"
  last = text.splitlines()[-1].split()
  assert last[-2:] == ["1,235,496", "349.15"]  # torchvision: 1,235,496 params, 0.349 GFLOPS
  assert "fire9/expand3x3" in text


@pytest.mark.slow  # ~20 s (abstract init of every registered model); run -m slow after changing a model
def test_docs_models_md_lists_every_model_with_current_counts():
  """Regenerate with `python -m experiments.model_zoo --all` when this fails."""
  rows = {}
  for line in open(os.path.join(ROOT, "docs", "models.md")):
    m = re.match(r"\| (\w+) \| (\d+) \| ([\d,]+) \|", line)
    if m:
      rows[m.group(1)] = int(m.group(3).replace(",", ""))
  assert sorted(rows) == models.names()
  for name, n in rows.items():
    assert _n(abstract_variables(name)) == n, name


def test_cli_bad_name_is_one_clear_error():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  bad = subprocess.run([sys.executable, "-m", "experiments.model_zoo", "--model=resnet51"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 1 and "error: unknown model 'resnet51'" in bad.stderr, bad.stderr[-2000:]
  assert "Traceback" not in bad.stderr
