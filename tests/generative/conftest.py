"""Shared fixtures of the generative tests."""

import pytest


@pytest.fixture(scope="session")
def parts3d_small(tmp_path_factory):
  """A TFDS data_dir holding ``shapes3d_parts/small``, built once per test session (worker)."""
  from research.data import parts3d
  d = str(tmp_path_factory.mktemp("parts3d"))
  parts3d.builder("small", d)
  return d

