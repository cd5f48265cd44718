"""Cache bytes: measured against the formula, the calculator against hand-computed values."""

import pytest

import kvlab
from kvlab.bench import PRESETS
from kvlab.memory import (
    cache_growth,
    cache_size,
    dtype_bytes,
    filled_bytes,
    human_bytes,
    other_family_model,
    preset,
    reshaped,
)
from kvlab.stepper import DecodeStepper


@pytest.mark.parametrize("tokens", [1, 100, 1024, 8192])
def test_calculator_matches_hand_computed_values(tokens):
    smollm2 = cache_size(PRESETS["SmolLM2-135M"], tokens, 1, "float32")
    assert smollm2.cache_bytes == 2 * 30 * 3 * 64 * tokens * 4
    assert smollm2.multi_head_cache_bytes == 2 * 30 * 9 * 64 * tokens * 4
    distil = cache_size(PRESETS["DistilGPT-2"], tokens, 1, "float32")
    assert distil.cache_bytes == 2 * 6 * 12 * 64 * tokens * 4
    assert distil.multi_head_cache_bytes == distil.cache_bytes  # already multi-head


def test_calculator_batch_dtype_and_weights():
    llama3 = cache_size(PRESETS["Llama-3-8B"], 8192, 1, "float16")
    assert llama3.cache_bytes == 2 * 32 * 8 * 128 * 8192 * 2 == 2 ** 30
    assert llama3.per_token_bytes == 2 * 32 * 8 * 128 * 2
    assert llama3.weight_bytes == PRESETS["Llama-3-8B"].n_params * 2
    batch4 = cache_size(PRESETS["Llama-2-7B"], 4096, 4, "bfloat16")
    assert batch4.cache_bytes == 2 * 32 * 32 * 128 * 4096 * 4 * 2
    assert batch4.per_token_bytes == 2 * 32 * 32 * 128 * 4 * 2
    assert cache_size(PRESETS["GPT-2 small"], 1024, 1, "int8").cache_bytes \
        == 2 * 12 * 12 * 64 * 1024


def test_calculator_refuses_bad_values_with_clear_errors():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        dtype_bytes("float8")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("Llama-9")
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        reshaped(PRESETS["SmolLM2-135M"], n_kv_heads=4)
    with pytest.raises(ValueError, match="only n_layers"):
        reshaped(PRESETS["SmolLM2-135M"], d_model=3)
    with pytest.raises(ValueError, match="n_tokens"):
        cache_size(PRESETS["SmolLM2-135M"], -1)
    assert reshaped(PRESETS["SmolLM2-135M"], n_kv_heads=9).name == "SmolLM2-135M (modified)"
    assert reshaped(PRESETS["SmolLM2-135M"], n_kv_heads=3).name == "SmolLM2-135M"


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.50 KiB"
    assert human_bytes(2 ** 30) == "1.00 GiB"


@pytest.mark.parametrize("name", ["random:tiny-gpt2", "random:tiny-llama"])
def test_measured_cache_bytes_follow_the_formula(name):
    lm = kvlab.load(name, verbose=False)
    rows = cache_growth(lm, "Hello there", 4)
    n_prompt = len(lm.encode("Hello there"))
    assert [row.n_tokens for row in rows] == [n_prompt + s for s in range(4)]
    for row in rows:
        assert row.measured_bytes == row.formula_bytes == \
            2 * lm.n_layers * lm.n_kv_heads * lm.head_dim * row.n_tokens * 4


@pytest.mark.parametrize("name", ["random:tiny-gpt2", "random:tiny-llama"])
def test_transformers_own_cache_holds_the_same_bytes(name):
    lm = kvlab.load(name, verbose=False)
    stepper = DecodeStepper(lm, "Hello there, friend", max_new_tokens=1)
    stepper.step()  # the prefill: the prompt's positions are cached
    hf = kvlab.hf_generate(lm, "Hello there, friend", 1)  # its cache: the prompt's positions
    assert filled_bytes(stepper.cache) == stepper.cache.nbytes == hf.cache_bytes


def test_other_family_model():
    gpt2 = kvlab.load("random:tiny-gpt2", verbose=False)
    other = other_family_model(gpt2, verbose=False)
    assert other.family == "llama"
