"""kvlab: a Jupyter teaching kit on transformer self-attention and the key/value cache."""

from .cache import KVCache
from .generate import GenerationResult, generate, hf_generate
from .models import LoadedModel, ModelError, load

__all__ = ["KVCache", "GenerationResult", "LoadedModel", "ModelError", "generate",
           "hf_generate", "load"]
