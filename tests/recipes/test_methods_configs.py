"""The experiment configs of research.methods reject bad values (no training), the WRN params column, reporting."""

from __future__ import annotations

import pytest

from research.methods import large_minibatch, reporting, super_convergence, wrn_blocks


@pytest.mark.parametrize("kwargs,field", [
    (dict(range_steps=0), "--range_steps"),
    (dict(step_steps=-1), "--step_steps"),
    (dict(onecycle_steps=()), "--onecycle_steps"),
    (dict(onecycle_steps=(200, 0)), "--onecycle_steps"),
    (dict(range_min_lr=1.0, range_max_lr=0.5), "--range_max_lr"),
    (dict(target_accuracy=1.5), "--target_accuracy"),
    (dict(eval_every=0), "--eval_every"),
    (dict(model_kwargs=[8]), "--model_kwargs"),
    (dict(step_extra_lrs=(0.0, -0.1)), "--step_extra_lrs"),
])
def test_super_convergence_config_rejects(kwargs, field):
  with pytest.raises(ValueError, match=field):
    super_convergence.SuperConvergenceConfig(**kwargs)


@pytest.mark.parametrize("kwargs,field", [
    (dict(conditions=("recipe", "lars")), "--conditions: unknown 'lars'"),
    (dict(conditions=()), "--conditions"),
    (dict(batch_sizes=()), "--batch_sizes"),
    (dict(batch_sizes=(32, 0)), "--batch_sizes"),
    (dict(base_batch_size=0), "--base_batch_size"),
    (dict(epochs=0.0), "--epochs"),
    (dict(warmup_epochs=-1.0), "--warmup_epochs"),
    (dict(per_device_batch=-1), "--per_device_batch"),
    (dict(batch_sizes=(32, 48), per_device_batch=32), "multiples of --per_device_batch=32"),
])
def test_large_minibatch_config_rejects(kwargs, field):
  with pytest.raises(ValueError, match=field):
    large_minibatch.LargeMinibatchConfig(**kwargs)


@pytest.mark.parametrize("kwargs,field", [
    (dict(block_types=("3-3", "5-5")), "--block_types: '5-5' is not in the table"),
    (dict(block_types=("3x3",)), "--block_types: '3x3' is not kernel sizes"),
    (dict(depth_offset=3), r"--depth_offset=3 leaves depth 4 for B\(3,1,3\)"),
    (dict(num_steps=0), "--num_steps"),
    (dict(train_k=0), "--train_k"),
    (dict(warmup_steps=-1), "--warmup_steps"),
])
def test_wrn_blocks_config_rejects(kwargs, field):
  with pytest.raises(ValueError, match=field):
    wrn_blocks.WRNBlocksConfig(**kwargs)


def test_defaults_are_valid_and_frozen():
  cfgs = [super_convergence.SuperConvergenceConfig(), large_minibatch.LargeMinibatchConfig(),
          wrn_blocks.WRNBlocksConfig(block_types=("3-1-3",), depth_offset=2)]
  assert cfgs[2].depth((3, 1, 3)) == 10
  for cfg in cfgs:
    with pytest.raises(AttributeError):
      cfg.seed = 1


def test_large_minibatch_run_config_scales_lr_and_warmup():
  """k = B / base = 4: linear LR x4, warmup from the base LR (1/k), zero-init γ only for ``recipe``."""
  from research.train import classify
  cfg = large_minibatch.LargeMinibatchConfig(batch_sizes=(128,), epochs=2.0, warmup_epochs=1.0)
  base = classify.ClassifyConfig(learning_rate=cfg.learning_rate, base_batch_size=cfg.base_batch_size)
  plain, recipe = (large_minibatch.run_config(cfg, base, c, 128, 1280) for c in ("no_recipe", "recipe"))
  assert (plain.num_steps, plain.warmup_steps, classify.effective_learning_rate(plain)) == (20, 0, 0.05)
  assert (recipe.num_steps, recipe.warmup_steps, recipe.warmup_init) == (20, 10, 0.25)
  assert classify.effective_learning_rate(recipe) == pytest.approx(0.2)
  assert recipe.zero_init_residual and not plain.zero_init_residual
  assert recipe.eval_every == recipe.checkpoint_every == 20
  assert plain.num_devices == recipe.num_devices == 4  # k = 128 / n workers of n = 32 examples (BN batch)
  every = large_minibatch.LargeMinibatchConfig(batch_sizes=(128,), per_device_batch=0)
  assert large_minibatch.run_config(every, base, "recipe", 128, 1280).num_devices == 0  # 0: all devices


def test_wrn_params_column_reproduces_table():
  rows = wrn_blocks.params_column()  # jax.eval_shape only: no FLOPs
  assert [(r["block_type"], r["depth"]) for r in rows] == [
      (wrn_blocks.block_name(bt), depth) for bt, depth, *_ in wrn_blocks.TABLE]
  for r in rows:
    assert r["match"] and r["params_M"] == r["published_M"], r


def test_markdown_table_and_file(tmp_path):
  table = reporting.markdown_table(["run", "acc"], [["a", "0.5000"], ["b", None]])
  assert table.splitlines() == ["| run | acc |", "|---|---|", "| a | 0.5000 |", "| b | None |"]
  assert reporting.markdown_table(["x"], []) == "| x |\n|---|"
  path = tmp_path / "summary.md"
  reporting.write_markdown(str(path), "head", table)
  assert path.read_text() == "head\n\n" + table + "\n"


def test_write_summary_and_line_plot(tmp_path):
  reporting.write_summary(str(tmp_path), {"b": 1, "a": [0.5]})
  assert (tmp_path / "summary.json").read_text() == '{\n  "a": [\n    0.5\n  ],\n  "b": 1\n}\n'  # fileio format
  assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind
  png = tmp_path / "p.png"
  reporting.line_plot(str(png), {"x": ((32, 64), (0.1, 0.2))}, xlabel="b", ylabel="acc", log2_x=True,
                      hline=(0.15, "target"))
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
