"""Why the cache is exact: cached vs uncached vs transformers, earlier K/V unchanged.

(C2, the mask alignment, is tested in test_decoder.py.)"""

import pytest
import torch

import kvlab
from kvlab import decoder
from kvlab.exactness import compare_runs, earlier_kv_change

PROMPT = "Seven tokens or so go into the prefill"


@pytest.fixture(scope="module", params=["random:tiny-gpt2", "random:tiny-llama"])
def lm(request):
    return kvlab.load(request.param, verbose=False)


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
    def sees_everything(n_new, n_total, device=None):
        return torch.ones(n_new, n_total, dtype=torch.bool)

    monkeypatch.setattr(decoder, "causal_mask", sees_everything)
    assert earlier_kv_change(lm, PROMPT).max_diff > 1e-4  # keys from layer 1 on now change
