"""The decode loop's contract: results, context limit (C6), sampling, bad prompts."""

import importlib

import pytest

import kvlab

gen = importlib.import_module("kvlab.generate")  # the module (kvlab.generate is the function)


def test_result_fields(tiny_gpt2):
    result = kvlab.generate(tiny_gpt2, "Hello world", 5)
    assert result.prompt_ids == [15496, 995]  # GPT-2's real tokenizer
    assert len(result.new_ids) == len(result.step_times_s) == 5
    assert result.text == tiny_gpt2.decode(result.new_ids)
    # the cache holds the prompt and every new token but the last (never fed back): 6 positions
    assert result.cache_bytes == 2 * 2 * 4 * 16 * 6 * 4  # layers, kv heads, hd, tokens, fp32
    assert kvlab.generate(tiny_gpt2, "Hello world", 5, cache=False).cache_bytes == 0


def test_exact_number_of_steps_even_past_eos(tiny_gpt2):
    eos = tiny_gpt2.tokenizer.eos_token_id
    result = kvlab.generate(tiny_gpt2, [eos, eos], 6)
    assert len(result.new_ids) == 6


def test_c6_context_limit_1024_works_1025_refused_before_work(distil, monkeypatch):
    prompt = list(range(1000, 2000))  # 1000 token ids
    ok = kvlab.generate(distil, prompt, 24)
    assert len(ok.all_ids) == 1024

    def no_work(*args, **kwargs):
        raise AssertionError("work was done before the limit was checked")

    monkeypatch.setattr(gen, "forward", no_work)
    monkeypatch.setattr(gen, "prepare", no_work)
    for run in (kvlab.generate, kvlab.hf_generate):
        with pytest.raises(ValueError, match="1025 tokens exceeds .* limit of 1024"):
            run(distil, prompt, 25)


def test_sampling_is_seeded_and_respects_top_k(tiny_llama):
    a = kvlab.generate(tiny_llama, "Once", 10, temperature=1.0, top_k=5, seed=3)
    b = kvlab.generate(tiny_llama, "Once", 10, temperature=1.0, top_k=5, seed=3)
    assert a.new_ids == b.new_ids
    import torch

    logits = torch.tensor([0.0, 5.0, 4.0, -1.0])
    picks = {gen.pick_next(logits, 1.0, 2, torch.Generator().manual_seed(s)) for s in range(50)}
    assert picks <= {1, 2}


@pytest.mark.parametrize("prompt, message", [
    ("", "prompt is empty"),
    (["first text", "second, longer text"], "one prompt is expected, got a list of 2 texts"),
    ([1, 99999999], "outside the vocabulary"),
    (3.5, "prompt must be a non-empty text or list of token ids"),
])
def test_bad_prompts_get_clear_errors(tiny_gpt2, prompt, message):
    with pytest.raises(ValueError, match=message):
        kvlab.generate(tiny_gpt2, prompt, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer, got 0"),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(top_k=0), "top_k must be None or a positive integer"),
])
def test_bad_options_get_clear_errors(tiny_gpt2, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kvlab.generate(tiny_gpt2, "hi", **{"max_new_tokens": 3, **kwargs})


def test_hf_generate_restores_eager_attention(tiny_gpt2):
    result = kvlab.hf_generate(tiny_gpt2, "Hello world", 4)
    assert len(result.step_times_s) == len(result.new_ids) == 4
    assert tiny_gpt2.model.config._attn_implementation == "eager"


def test_hf_reference_with_eos_inside_the_prompt(tiny_gpt2):
    """transformers masks pad (= EOS) tokens unless told every prompt position is real."""
    prompt = "Hello<|endoftext|>The cat sat"
    assert tiny_gpt2.tokenizer.eos_token_id in gen.prompt_to_ids(tiny_gpt2, prompt)
    ours = kvlab.generate(tiny_gpt2, prompt, 8, return_logits=True)
    ref = kvlab.hf_generate(tiny_gpt2, prompt, 8, return_logits=True)
    assert ours.new_ids == ref.new_ids
    assert (ours.logits - ref.logits).abs().max() < 1e-4


def test_hf_reference_ignores_the_checkpoints_generation_settings(tiny_llama):
    config = tiny_llama.model.generation_config
    config.repetition_penalty, config.no_repeat_ngram_size = 1.5, 2
    try:
        assert (kvlab.generate(tiny_llama, "The cat sat", 12).new_ids
                == kvlab.hf_generate(tiny_llama, "The cat sat", 12).new_ids)
        assert tiny_llama.model.generation_config.repetition_penalty == 1.5  # restored
    finally:
        config.repetition_penalty, config.no_repeat_ngram_size = 1.0, 0


def test_numpy_and_torch_inputs_are_accepted(tiny_gpt2):
    import numpy as np
    import torch

    expected = kvlab.generate(tiny_gpt2, [1, 2, 3], 3).new_ids
    assert kvlab.generate(tiny_gpt2, np.array([1, 2, 3]), np.int64(3)).new_ids == expected
    assert kvlab.generate(tiny_gpt2, torch.tensor([[1, 2, 3]]), 3).new_ids == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(temperature=True), "temperature must be a finite number >= 0"),
    (dict(seed=None), "seed must be an integer"),
    (dict(seed=1.5), "seed must be an integer"),
])
def test_bad_sampling_options_are_refused_by_both_loops(tiny_gpt2, kwargs, message):
    for run in (kvlab.generate, kvlab.hf_generate):
        with pytest.raises(ValueError, match=message):
            run(tiny_gpt2, "hi", 3, **kwargs)
