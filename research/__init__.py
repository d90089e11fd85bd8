"""JAX/Flax research library: ops -> layers -> models -> methods/train/data."""

__version__ = "0.1.0"
