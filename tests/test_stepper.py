"""The decode stepper's state machine: prefill, step forward, reset, change prompt mid-way."""

import pytest
import torch

import kvlab
from kvlab.bench import spec_of, step_cost
from kvlab.stepper import DecodeStepper

PROMPT = "The cache keeps the keys and values"


@pytest.fixture(scope="module", params=["random:tiny-gpt2", "random:tiny-llama"])
def lm(request):
    return kvlab.load(request.param, verbose=False)


def test_first_step_is_the_prefill_of_the_whole_prompt(lm):
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=4)
    n_prompt = len(lm.encode(PROMPT))
    assert stepper.steps == [] and stepper.cache.length == 0
    record = stepper.step()
    assert record.kind == "prefill" and record.index == 0
    assert record.n_new == n_prompt and record.n_cached == 0
    assert list(record.positions) == list(range(n_prompt))
    assert stepper.cache.length == n_prompt
    assert record.attentions[0].shape == (lm.n_heads, n_prompt, n_prompt)


def test_each_later_step_feeds_one_token_through_the_cache(lm):
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=4)
    n_prompt = len(lm.encode(PROMPT))
    for index in range(4):
        record = stepper.step()
        assert record.index == index
        if index:
            assert record.kind == "decode"
            assert record.fed_ids == [stepper.steps[index - 1].next_id]
            assert (record.n_cached, record.n_new) == (n_prompt + index - 1, 1)
            assert record.attentions[0].shape == (lm.n_heads, 1, record.n_total)
    assert stepper.cache.length == n_prompt + 3  # the last chosen token is not fed yet


def test_steps_match_generate_cached_and_uncached(lm):
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=6)
    for _ in range(6):
        stepper.step()
    cached = kvlab.generate(lm, PROMPT, 6, cache=True, return_logits=True)
    uncached = kvlab.generate(lm, PROMPT, 6, cache=False, return_logits=True)
    logits = torch.stack([record.logits for record in stepper.steps])
    assert stepper.new_ids == cached.new_ids == uncached.new_ids
    assert torch.equal(logits, cached.logits)
    assert (logits - uncached.logits).abs().max() < 1e-4


def test_reset_starts_over_from_an_empty_cache(lm):
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=5)
    first = [stepper.step().next_id for _ in range(3)]
    stepper.reset()
    assert stepper.steps == [] and stepper.cache.length == 0
    assert [stepper.step().next_id for _ in range(3)] == first


def test_changing_the_prompt_mid_way_equals_a_fresh_stepper(lm):
    other = "A completely different prompt"
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=5)
    for _ in range(3):
        stepper.step()
    stepper.reset(other)
    fresh = DecodeStepper(lm, other, max_new_tokens=5)
    for _ in range(4):
        mine, theirs = stepper.step(), fresh.step()
        assert mine.next_id == theirs.next_id and mine.n_cached == theirs.n_cached
        assert torch.equal(mine.logits, theirs.logits)
    assert stepper.prompt_ids == lm.encode(other)


def test_stepping_past_max_new_tokens_is_refused(lm):
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=2)
    stepper.step()
    stepper.step()
    assert stepper.done
    with pytest.raises(ValueError, match="max_new_tokens=2"):
        stepper.step()


def test_bad_prompts_and_lengths_are_refused_before_any_work(lm):
    with pytest.raises(ValueError, match="empty"):
        DecodeStepper(lm, "", max_new_tokens=2)
    with pytest.raises(ValueError, match="context limit"):
        DecodeStepper(lm, [1] * lm.max_positions, max_new_tokens=1)
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=2)
    stepper.step()
    with pytest.raises(ValueError, match="empty"):
        stepper.reset("")
    assert len(stepper.steps) == 1  # a refused reset leaves the state as it was


def test_keys_values_are_the_cache_rows_the_head_reads(lm):
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=5)
    stepper.step()
    stepper.step()
    group = lm.n_heads // lm.n_kv_heads
    head = lm.n_heads - 1
    assert stepper.kv_head_of(head) == head // group
    keys, values = stepper.keys_values(1, head)
    n_total = stepper.record().n_total
    assert keys.shape == (n_total, lm.head_dim)
    assert torch.equal(keys, stepper.cache.keys[1][0, head // group, :n_total])
    assert torch.equal(values, stepper.cache.values[1][0, head // group, :n_total])
    keys_then = keys.clone()
    stepper.step()
    stepper.step()
    keys_now, _ = stepper.keys_values(1, head, step=1)  # looking back: same rows
    assert torch.equal(keys_now, keys_then)


def test_attention_rows_are_probabilities_over_every_key(lm):
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=3)
    stepper.step()
    stepper.step()
    row = stepper.attention(0, 0)
    assert row.shape == (1, stepper.record().n_total)
    assert torch.allclose(row.sum(-1), torch.ones(1))
    prefill = stepper.attention(0, 0, step=0)
    assert torch.equal(prefill.triu(diagonal=1), torch.zeros_like(prefill))  # causal


def test_totals_count_reuse_and_flops_from_the_cost_model(lm):
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=4)
    n_prompt = len(lm.encode(PROMPT))
    for _ in range(4):
        stepper.step()
    totals = stepper.totals()
    assert totals["positions_computed"] == n_prompt + 3
    assert totals["positions_reused"] == sum(n_prompt + s for s in range(3))
    spec = spec_of(lm)
    prefill = step_cost(spec, n_prompt - 1, cached=False).flops
    assert totals["flops"] == prefill + sum(step_cost(spec, n_prompt + s, True).flops
                                            for s in range(3))
    assert totals["flops_recomputing"] == prefill + sum(
        step_cost(spec, n_prompt + s, False).flops for s in range(3))
    first = stepper.totals(0)
    assert first["flops"] == first["flops_recomputing"] == prefill


def test_shapes_follow_the_model_and_the_step(lm):
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=3)
    stepper.step()
    stepper.step()
    shapes = {name: shape for name, shape, _ in stepper.shapes()}
    n_total = stepper.record().n_total
    assert shapes["q"] == (1, lm.n_heads, 1, lm.head_dim)
    assert shapes["k, v after append"] == (1, lm.n_kv_heads, n_total, lm.head_dim)
    assert shapes["scores, probs"] == (1, lm.n_heads, 1, n_total)
    assert ("k, v after repeat_interleave" in shapes) == (lm.n_kv_heads != lm.n_heads)
    prefill = {name: shape for name, shape, _ in stepper.shapes(0)}
    assert prefill["token ids fed"] == (1, len(stepper.prompt_ids))


def test_bad_indices_name_the_value_and_the_range(lm):
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=2)
    with pytest.raises(ValueError, match="no step taken yet"):
        stepper.record()
    stepper.step()
    with pytest.raises(ValueError, match="step must be an integer in 0..0"):
        stepper.record(3)
    with pytest.raises(ValueError, match=f"layer must be an integer in 0..{lm.n_layers - 1}"):
        stepper.keys_values(lm.n_layers, 0)
    with pytest.raises(ValueError, match="head must be"):
        stepper.attention(0, -1)


def test_a_long_prefill_keeps_only_the_last_attention_rows(lm, monkeypatch):
    import kvlab.stepper

    n_prompt = len(lm.encode(PROMPT))
    row_bytes = lm.n_layers * lm.n_heads * n_prompt * 4
    monkeypatch.setattr(kvlab.stepper, "ATTENTION_BUDGET_BYTES", 3 * row_bytes)
    stepper = DecodeStepper(lm, PROMPT, max_new_tokens=2)
    record = stepper.step()
    assert stepper.attention(0, 0).shape == (3, n_prompt)
    assert record.first_query_kept == n_prompt - 3
    full = kvlab.generate(lm, PROMPT, 1, record_attention=True).attentions[0][0][0]  # [n, T]
    assert torch.equal(stepper.attention(0, 0), full[-3:])
    assert stepper.step().first_query_kept == n_prompt  # decode steps keep their one row
