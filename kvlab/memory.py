"""What the KV cache costs in memory: measured on a real run, and by the formula for any model.

The formula is `bench.kv_cache_bytes`: 2 (keys and values) x layers x batch x KV heads x
head_dim x tokens x bytes per element. Here it is put next to what the cache tensors of a
real run hold, next to the model's weight bytes, and next to the cache the same model would
need with full multi-head attention (one KV head per query head).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .bench import DTYPE_BYTES, PRESETS, ModelSpec, kv_cache_bytes, spec_cache_bytes
from .cache import KVCache
from .models import available, load_once
from .stepper import DecodeStepper


def filled_bytes(cache: KVCache) -> int:
    """Bytes of the cache tensors' filled rows, counted element by element (measured)."""
    return sum(t[:, :, :cache.length].numel() * t.element_size()
               for t in cache.keys + cache.values)


@dataclass
class GrowthRow:
    n_tokens: int  # positions in the cache
    measured_bytes: int  # from the tensors of a real run
    formula_bytes: int  # from kv_cache_bytes


def cache_growth(lm, prompt, new_tokens: int) -> list[GrowthRow]:
    """Decode `new_tokens` steps; the cache's bytes after each, measured and by formula."""
    stepper = DecodeStepper(lm, prompt, max_new_tokens=new_tokens)
    element_size = stepper.cache.element_size
    rows = []
    for _ in range(new_tokens):
        stepper.step()
        length = stepper.cache.length
        rows.append(GrowthRow(length, filled_bytes(stepper.cache),
                              kv_cache_bytes(lm.n_layers, lm.n_kv_heads, lm.head_dim, length,
                                             1, element_size)))
    return rows


def other_family_model(lm, verbose: bool = True):
    """A model of the other family, for comparison: the real one if here, else random weights.

    Byte counts depend on shapes only, so random weights measure the same cache.
    """
    wanted = ["smollm2-135m", "random:tiny-llama"] if lm.family == "gpt2" else \
        ["distilgpt2", "random:distilgpt2"]
    here = {name for name, _, ok, _ in available() if ok}
    for name in wanted:
        if name in here:
            return load_once(name, verbose=verbose)
    raise ValueError(f"no model of the other family is available here (tried "
                     f"{', '.join(wanted)}); see `python -m kvlab models`")


# ---------------------------------------------------------------------------------------------
# The calculator


@dataclass
class CacheSize:
    """A model's KV cache at a given context, batch and dtype, beside its weights."""

    spec: ModelSpec
    n_tokens: int
    batch: int
    dtype: str
    cache_bytes: int
    per_token_bytes: int  # one more position, whole batch
    weight_bytes: int
    multi_head_cache_bytes: int  # the same model with one KV head per query head

    @property
    def cache_to_weights(self) -> float:
        return self.cache_bytes / self.weight_bytes


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name; a clear error for an unknown one."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def reshaped(spec: ModelSpec, **changes: int) -> ModelSpec:
    """The spec with some shape numbers changed (checked: KV heads must divide query heads)."""
    unknown = set(changes) - {"n_layers", "n_heads", "n_kv_heads", "head_dim"}
    if unknown:
        raise ValueError(f"only n_layers, n_heads, n_kv_heads and head_dim can be changed, "
                         f"got {', '.join(sorted(unknown))}")
    name = spec.name if all(getattr(spec, k) == v for k, v in changes.items()) \
        else f"{spec.name} (modified)"
    return dataclasses.replace(spec, name=name, **changes)


def cache_size(spec: ModelSpec, n_tokens: int, batch: int = 1,
               dtype: str = "float32") -> CacheSize:
    """Cache bytes of `spec` holding n_tokens positions per sequence, with weight bytes."""
    element = dtype_bytes(dtype)
    multi_head = dataclasses.replace(spec, n_kv_heads=spec.n_heads)
    return CacheSize(
        spec=spec, n_tokens=n_tokens, batch=batch, dtype=dtype,
        cache_bytes=spec_cache_bytes(spec, n_tokens, batch, element),
        per_token_bytes=spec_cache_bytes(spec, 1, batch, element),
        weight_bytes=spec.n_params * element,
        multi_head_cache_bytes=spec_cache_bytes(multi_head, n_tokens, batch, element))


def preset(name: str) -> ModelSpec:
    """A preset from public model configs (bench.PRESETS), with a clear error for a typo."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def human_bytes(n: int | float) -> str:
    """Bytes in binary units: 1536 -> '1.50 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
