"""Notebook 02's exercise checks, each with right and wrong answers."""

import pytest
import torch

from kvlab import checks
from kvlab.bench import PRESETS
from kvlab.decoder import causal_mask


def solution_function(name: str, function: str):
    namespace = {"torch": torch}
    exec(checks.solution(name), namespace)
    return namespace[function]


# -- the cache append --------------------------------------------------------------------------


def test_append_solution_is_correct():
    assert checks.check_cache_append(solution_function("cache_append", "my_append"))


def test_append_kvcache_own_method_is_correct():
    assert checks.check_cache_append(lambda cache, layer, k, v: cache.append(layer, k, v))


def _at_position_zero(cache, layer, k, v):
    cache.keys[layer][:, :, :k.shape[2]] = k
    cache.values[layer][:, :, :k.shape[2]] = v
    end = cache.length + k.shape[2]
    return cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]


def _not_stored(cache, layer, k, v):
    old_k = cache.keys[layer][:, :, :cache.length]
    old_v = cache.values[layer][:, :, :cache.length]
    return torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)


def _swapped(cache, layer, k, v):
    return cache.append(layer, v, k)


def _advances_length(cache, layer, k, v):
    result = cache.append(layer, k, v)
    cache.advance(k.shape[2])
    return result


def _returns_new_only(cache, layer, k, v):
    cache.append(layer, k, v)
    return k, v


def _returns_whole_storage(cache, layer, k, v):
    cache.append(layer, k, v)
    return cache.keys[layer], cache.values[layer]


def _every_layer(cache, layer, k, v):
    for index in range(cache.n_layers):
        result = cache.append(index, k, v)
    return result


def _raises(cache, layer, k, v):
    return cache.keys[layer] @ k  # shape mismatch


@pytest.mark.parametrize("fn, words", [
    (_at_position_zero, "positions 0..0, over cached ones"),
    (_not_stored, "do not hold the new keys"),
    (_swapped, "swapped"),
    (_advances_length, "cache.length changed"),
    (_returns_new_only, "returned keys have shape"),
    (_returns_whole_storage, "returned keys have shape"),
    (_every_layer, "changed outside"),
    (_raises, "raised RuntimeError"),
    (lambda cache, layer, k, v: None, "not a pair"),
    ("my_append", "expected your function"),
])
def test_append_mistakes_are_named(fn, words):
    result = checks.check_cache_append(fn)
    assert not result
    assert words in result.message
    assert str(result).startswith("Not yet")


# -- the causal mask with a cache --------------------------------------------------------------


def test_mask_solution_and_the_decoders_mask_are_correct():
    assert checks.check_causal_mask(solution_function("causal_mask", "my_mask"))
    assert checks.check_causal_mask(lambda n, p: causal_mask(n, n + p))
    assert checks.check_causal_mask(lambda n, p: causal_mask(n, n + p).int())  # 0/1 is fine


def test_mask_c2_top_left_alignment_is_wrong_with_a_hint():
    result = checks.check_causal_mask(
        lambda n, p: torch.ones(n, n + p, dtype=torch.bool).tril())
    assert not result
    assert "top-left" in result.message and "only key 0" in result.message
    assert "LAST" in result.hint and "diagonal" in result.hint


def test_mask_full_square_top_left_is_wrong():
    result = checks.check_causal_mask(
        lambda n, p: torch.ones(n + p, n + p, dtype=torch.bool).tril())
    assert not result and "shape" in result.message


@pytest.mark.parametrize("fn, words", [
    (lambda n, p: ~causal_mask(n, n + p), "inverted"),
    (lambda n, p: causal_mask(n, n + p).tril(diagonal=p - 1), "misses its own key"),
    (lambda n, p: torch.ones(n, n + p, dtype=torch.bool), "a later token"),
    (lambda n, p: causal_mask(n, n + p).T, "rows and columns swapped"),
    (lambda n, p: torch.zeros(n, n + p).masked_fill(~causal_mask(n, n + p), float("-inf")),
     "-inf"),
    (lambda n, p: causal_mask(n, n + p) * 2, "other than True/False"),
    (lambda n, p: causal_mask(n, n + p) & (torch.arange(n + p) >= 1), "cannot see key 0"),
    (lambda n, p: "mask", "not a tensor"),
    (lambda n, p: 1 / 0, "raised ZeroDivisionError"),
])
def test_mask_mistakes_are_named(fn, words):
    result = checks.check_causal_mask(fn)
    assert not result
    assert words in result.message


# -- the cache size by hand -------------------------------------------------------------------


def test_cache_size_solution_is_correct():
    namespace = {}
    exec(checks.solution("cache_size"), namespace)
    assert checks.check_cache_size(namespace["answer"])
    assert checks.check_cache_size(2 * 32 * 8 * 128 * 8192 * 2)
    assert checks.check_cache_size(2 * 30 * 3 * 64 * 1000 * 4, model="SmolLM2-135M",
                                   n_tokens=1000, dtype="float32")
    assert checks.check_cache_size(float(2 * 6 * 12 * 64 * 1024 * 2 * 2),
                                   model="DistilGPT-2", n_tokens=1024, batch=2)


@pytest.mark.parametrize("answer, words", [
    (32 * 8 * 128 * 8192 * 2, "keys or values, not both"),
    (2 * 32 * 32 * 128 * 8192 * 2, "query heads"),
    (2 * 32 * 8 * 128 * 8192 * 4, "4 bytes per element"),
    (2 * 32 * 8 * 128 * 8192 * 16, "bits"),
    (2 * 8 * 128 * 8192 * 2, "one layer"),
    (1.0, "GiB"),
    (12345, "not it"),
    (0, "takes more than that"),
    ("1 GiB", "expected a number"),
    (float("nan"), "NaN"),
])
def test_cache_size_mistakes_are_named(answer, words):
    result = checks.check_cache_size(answer)
    assert not result
    assert words in result.message


def test_cache_size_batch_mistake():
    spec = PRESETS["Llama-2-7B"]
    one_sequence = 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * 4096 * 2
    result = checks.check_cache_size(one_sequence, model="Llama-2-7B", n_tokens=4096, batch=8)
    assert not result and "batch" in result.message


def test_solutions_exist_and_unknown_names_fail():
    for name in ("cache_append", "causal_mask", "cache_size"):
        assert checks.solution(name)
    with pytest.raises(KeyError, match="no exercise named"):
        checks.solution("nope")


def test_cache_size_accepts_numpy_and_refuses_nan():
    import numpy as np

    assert checks.check_cache_size(np.int64(2 * 32 * 8 * 128 * 8192 * 2))
    assert not checks.check_cache_size(float("nan"))
    assert not checks.check_cache_size("2 * 32")
