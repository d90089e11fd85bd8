"""research.fileio: atomic text/bytes/JSON writes (temporary file in the same directory + os.replace)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from research import fileio


def test_write_atomic_text_and_bytes_replace_the_file(tmp_path):
  p = tmp_path / "f.txt"
  fileio.write_atomic(p, "héllo\n")
  assert p.read_bytes() == "héllo\n".encode("utf-8")
  fileio.write_atomic(str(p), b"\x00\x01")
  assert p.read_bytes() == b"\x00\x01"
  assert os.listdir(tmp_path) == ["f.txt"]  # no temporary left behind


def test_write_json_atomic_format_and_numpy_jax_values(tmp_path):
  p = tmp_path / "s.json"
  fileio.write_json_atomic(p, {"b": np.float32(0.5), "a": np.arange(3), "c": jnp.array([[1, 2]]), "d": np.int64(7)})
  assert p.read_text() == ('{\n  "a": [\n    0,\n    1,\n    2\n  ],\n  "b": 0.5,\n  "c": [\n    [\n      1,\n'
                           '      2\n    ]\n  ],\n  "d": 7\n}\n')
  with pytest.raises(TypeError, match="not JSON serialisable"):
    fileio.write_json_atomic(p, {"x": object()})
  assert json.loads(p.read_text())["d"] == 7  # the failed write left the previous file intact


def test_failed_replace_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
  p = tmp_path / "f.txt"
  p.write_text("old")

  def boom(src, dst):
    assert os.path.dirname(src) == str(tmp_path) and src.endswith(".tmp")  # same directory: atomic rename
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", boom)
  with pytest.raises(OSError, match="disk full"):
    fileio.write_atomic(p, "new")
  assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
