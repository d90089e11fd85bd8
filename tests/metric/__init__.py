"""Tests of the Hungarian extras, affinity propagation and metric-learning losses (issue 17 items 5-6)."""
