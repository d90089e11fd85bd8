"""Sequence models (video / temporal embeddings). Modules are imported directly, e.g.
``research.models.sequence.tcc``."""
