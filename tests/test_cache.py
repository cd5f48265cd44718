"""KVCache: byte accounting, appends into place, reset, errors."""

import pytest
import torch

from kvlab.bench import kv_cache_bytes
from kvlab.cache import KVCache


def test_nbytes_follows_formula_as_it_fills():
    cache = KVCache(n_layers=3, n_kv_heads=2, head_dim=8, max_len=10)
    assert cache.nbytes == 0
    for layer in range(3):
        cache.append(layer, torch.ones(1, 2, 4, 8), torch.ones(1, 2, 4, 8))
    cache.advance(4)
    assert cache.nbytes == 2 * 3 * 2 * 8 * 4 * 4 == kv_cache_bytes(3, 2, 8, 4)
    assert cache.capacity_bytes == 2 * 3 * 2 * 8 * 10 * 4


def test_nbytes_of_model_caches(distil, smollm2):
    for lm, per_token in [(distil, 2 * 6 * 12 * 64 * 4), (smollm2, 2 * 30 * 3 * 64 * 4)]:
        cache = KVCache.for_model(lm, 20)
        cache.length = 20
        assert cache.nbytes == 20 * per_token


def test_append_returns_all_positions_and_stores_in_place():
    cache = KVCache(1, 1, 2, max_len=5)
    keys, values = cache.append(0, torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 2.0))
    cache.advance(2)
    keys, values = cache.append(0, torch.full((1, 1, 1, 2), 3.0), torch.full((1, 1, 1, 2), 4.0))
    cache.advance(1)
    assert keys.shape == (1, 1, 3, 2)
    assert keys[0, 0, :, 0].tolist() == [1.0, 1.0, 3.0]
    assert values[0, 0, :, 0].tolist() == [2.0, 2.0, 4.0]
    assert keys.data_ptr() == cache.keys[0].data_ptr()  # a view, not a copy


def test_reset_forgets_everything():
    cache = KVCache(2, 1, 2, max_len=4)
    for layer in range(2):
        cache.append(layer, torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))
    cache.advance(3)
    cache.reset()
    assert cache.length == 0 and cache.nbytes == 0
    assert all(k.abs().sum() == 0 for k in cache.keys)


def test_overflow_is_refused_with_sizes_named():
    cache = KVCache(1, 1, 2, max_len=2)
    with pytest.raises(ValueError, match="max_len of 2"):
        cache.append(0, torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3"])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="positive integer"):
        KVCache(bad, 1, 1, 1)


def test_advance_past_max_len_is_refused():
    cache = KVCache(1, 1, 2, max_len=4)
    with pytest.raises(ValueError, match="max_len 4"):
        cache.advance(10)
    assert cache.length == 0
