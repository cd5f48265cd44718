"""kvlab: a Jupyter teaching kit on transformer self-attention and the key/value cache."""

from .cache import KVCache
from .models import LoadedModel, ModelError, load

__all__ = ["KVCache", "LoadedModel", "ModelError", "load"]
