"""Why the cache is exact: C2 (mask alignment), cached vs uncached vs transformers, earlier K/V."""

import pytest
import torch

import kvlab
from kvlab import decoder
from kvlab.cache import KVCache
from kvlab.exactness import compare_runs, earlier_kv_change

PROMPT = "Seven tokens or so go into the prefill"


@pytest.fixture(scope="module", params=["random:tiny-gpt2", "random:tiny-llama"])
def lm(request):
    return kvlab.load(request.param, verbose=False)


def _cached_vs_full(lm, n_new: int) -> float:
    """C2: prefill 7 tokens, feed n_new through the cache; compare with one full pass."""
    ids = lm.encode(PROMPT * 3)[: 7 + n_new]
    cache = KVCache.for_model(lm, max_len=7 + n_new)
    decoder.forward(lm, ids[:7], cache)
    cached = decoder.forward(lm, ids[7:], cache).logits[0]  # [n, V]
    full = decoder.forward(lm, ids).logits[0, -n_new:]  # last n rows of the full pass
    return float((cached - full).abs().max())


@pytest.mark.parametrize("n_new", [1, 3])
def test_c2_new_tokens_through_the_cache_equal_a_full_pass(lm, n_new):
    assert _cached_vs_full(lm, n_new) < 1e-4


def test_c2_a_top_left_mask_would_be_caught(lm, monkeypatch):
    def top_left(n_new, n_total):
        return torch.ones(n_new, n_total, dtype=torch.bool).tril()

    monkeypatch.setattr(decoder, "causal_mask", top_left)
    assert _cached_vs_full(lm, 3) > 1e-3


def test_cached_uncached_and_transformers_agree(lm):
    cached = kvlab.generate(lm, PROMPT, 8, cache=True, return_logits=True)
    uncached = kvlab.generate(lm, PROMPT, 8, cache=False, return_logits=True)
    reference = kvlab.hf_generate(lm, PROMPT, 8, return_logits=True)
    for other in (uncached, reference):
        comparison = compare_runs(cached, other, "cached", "other")
        assert len(comparison.rows) == 8
        assert comparison.same_tokens and comparison.max_logit_diff < 1e-4
        assert comparison.exact
    table = compare_runs(cached, uncached).table(lm.decode)
    assert table[0][0] == 0 and table[0][1] == repr(lm.decode([cached.new_ids[0]]))


def test_compare_runs_refuses_runs_it_cannot_line_up(lm):
    with_logits = kvlab.generate(lm, PROMPT, 2, return_logits=True)
    without = kvlab.generate(lm, PROMPT, 2)
    other_prompt = kvlab.generate(lm, "Something else", 2, return_logits=True)
    with pytest.raises(ValueError, match="return_logits=True"):
        compare_runs(with_logits, without)
    with pytest.raises(ValueError, match="different prompts"):
        compare_runs(with_logits, other_prompt)


def test_earlier_keys_and_values_do_not_change_when_a_token_is_appended(lm):
    result = earlier_kv_change(lm, PROMPT)
    assert result.n_earlier == len(lm.encode(PROMPT)) - 1
    assert result.max_diff < 1e-6
    with pytest.raises(ValueError, match="at least 2 tokens"):
        earlier_kv_change(lm, lm.encode(PROMPT)[:1])


def test_without_a_causal_mask_earlier_keys_would_change(lm, monkeypatch):
    def sees_everything(n_new, n_total):
        return torch.ones(n_new, n_total, dtype=torch.bool)

    monkeypatch.setattr(decoder, "causal_mask", sees_everything)
    assert earlier_kv_change(lm, PROMPT).max_diff > 1e-4  # keys from layer 1 on now change
