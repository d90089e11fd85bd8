"""Fixture for the multi-process tests: one ``shapes`` data dir shared by the whole session."""

from __future__ import annotations

import sys

import pytest

from multihost_helpers import check, child_env, run


@pytest.fixture(scope="session")
def shapes_dir(request, tmp_path_factory) -> str:
  """A data dir holding the procedural ``shapes`` dataset, built once per session: the suite-wide
  ``shapes_data_dir`` fixture of ``tests/conftest.py`` when it exists, else built here in a child process
  (~25 s on 2 cores)."""
  try:
    return request.getfixturevalue("shapes_data_dir")
  except pytest.FixtureLookupError:
    pass
  data_dir = str(tmp_path_factory.mktemp("multihost_data"))
  code = ("import sys; from research.data import pipeline as p; "
          "p.get_spec('shapes', sys.argv[1]); p.get_source('shapes', 'train', sys.argv[1])")
  check(run([sys.executable, "-c", code, data_dir], env=child_env(1), timeout=240))
  return data_dir
