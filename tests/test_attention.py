"""kvlab.attention: maps, readable labels (case C1), one-text errors (C9), generated rows (C8)."""

from __future__ import annotations

import pytest
import torch

from kvlab.attention import (
    MAX_VIEW_TOKENS,
    attention_maps,
    generated_attention,
    head_summaries,
    layer0_queries_keys,
    readable,
    token_labels,
)
from kvlab.decoder import forward
from kvlab.widgets import cached_model

C1_TEXT = "Line one\nLine two 🙂 naïve"
RAW_BYTE_LEVEL_SYMBOLS = ("Ġ", "Ċ", "âĢ", "Ã")


# -- C1: readable labels ------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("random:distilgpt2", ["Line", "␣one", "↵", "Line", "␣two", "␣🙂", "␣naïve"]),
    ("smollm2-135m", ["Line", "␣one", "↵", "Line", "␣two", "␣🙂", "␣na", "ïve"]),
])
def test_c1_labels_are_readable(name, expected):
    lm = cached_model(name)  # distilgpt2's real tokenizer (random weights), SmolLM2's own
    maps = attention_maps(lm, C1_TEXT)
    assert maps.labels == expected
    assert maps.weights.shape[2:] == (len(expected), len(expected))  # one row/column per token
    for label in maps.labels:
        assert label.strip() and not any(symbol in label for symbol in RAW_BYTE_LEVEL_SYMBOLS)


@pytest.mark.parametrize("name", ["random:tiny-gpt2", "random:tiny-llama"])
def test_c1_split_emoji_bytes_are_named_never_blank(name):
    lm = cached_model(name)
    ids = lm.encode("🤗 ok")  # 🤗 = F0 9F A4 97 is split over several byte-level tokens
    labels = token_labels(lm.tokenizer, ids)
    assert labels[:3] == ["<0xF0><0x9F>", "<0xA4>", "<0x97>"]
    assert labels[-1] == "␣ok"
    assert all(label.strip() for label in labels)


def test_readable_marks_whitespace_and_names_invisible_characters():
    assert readable(b" a\tb\r\n") == "␣a⇥b<CR>↵"
    assert readable("\u00a0\u200d".encode()) == "<U+00A0><U+200D>"
    assert readable(b"\xe6\x97") == "<0xE6><0x97>"  # first two bytes of a CJK character
    assert readable("naïve 日".encode()) == "naïve␣日"


def test_special_tokens_keep_their_name(tiny_gpt2):
    eos = tiny_gpt2.tokenizer.eos_token_id
    assert token_labels(tiny_gpt2.tokenizer, [eos]) == ["<|endoftext|>"]


# -- the maps --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["random:tiny-gpt2", "random:tiny-llama"])
def test_maps_equal_transformers_attentions(name):
    lm = cached_model(name)
    maps = attention_maps(lm, "The cat sat on the mat.")
    ids = torch.tensor([maps.token_ids])
    with torch.inference_mode():
        reference = lm.model(ids, output_attentions=True).attentions  # per layer [1, H, n, n]
    assert maps.weights.shape == (lm.n_layers, lm.n_heads, ids.shape[1], ids.shape[1])
    assert torch.allclose(maps.weights, torch.cat(reference), atol=1e-5)


def test_maps_rows_sum_to_one_and_future_is_zero(tiny_llama):
    maps = attention_maps(tiny_llama, "one two three four five")
    n = maps.n_tokens
    assert torch.allclose(maps.weights.sum(-1), torch.ones(maps.n_layers, maps.n_heads, n))
    assert maps.weights.triu(diagonal=1).abs().max() == 0


def test_head_index_errors_name_the_range(tiny_gpt2):
    maps = attention_maps(tiny_gpt2, "hello world")
    with pytest.raises(ValueError,
                       match=r"head 4 does not exist: random:tiny-gpt2 has heads 0\.\.3"):
        maps.head(0, 4)
    with pytest.raises(ValueError, match=r"layer -1 .* layers 0\.\.1"):
        maps.head(-1, 0)


# -- C9 and other bad input ----------------------------------------------------------------


@pytest.mark.parametrize("batch", [
    ["The cat sat.", "A much longer second prompt with more tokens in it."],
    [[464, 3797], [32, 845, 2392]],
    torch.tensor([[464, 3797, 3332], [32, 845, 2392]]),
])
def test_c9_a_batch_gets_one_clear_error(tiny_gpt2, batch):
    with pytest.raises(ValueError, match=r"one (text|prompt)") as error:
        attention_maps(tiny_gpt2, batch)
    assert "positions" not in str(error.value)  # never bertviz's "N positions vs M tokens"


def test_empty_text_is_refused(tiny_gpt2):
    for text in ("", "   "):
        with pytest.raises(ValueError, match="the text is empty"):
            attention_maps(tiny_gpt2, text)


def test_text_over_the_context_limit_names_count_and_limit(tiny_gpt2):
    with pytest.raises(ValueError, match=r"300 tokens, over random:tiny-gpt2's context limit "
                                         r"of 256 tokens"):
        attention_maps(tiny_gpt2, "x" + " x" * 299)


def test_text_over_the_view_limit_says_why(smollm2):
    with pytest.raises(ValueError, match=rf"600 tokens, over the attention view's limit .* "
                                         rf"of {MAX_VIEW_TOKENS} tokens"):
        attention_maps(smollm2, " x" * 600)


# -- summaries ------------------------------------------------------------------------------


def test_head_summaries_on_known_maps():
    n = 4
    previous_head = torch.zeros(n, n)
    previous_head[0, 0] = 1
    previous_head[torch.arange(1, n), torch.arange(0, n - 1)] = 1  # always the token before
    sink_head = torch.zeros(n, n)
    sink_head[:, 0] = 1  # always the first token
    uniform = torch.ones(n, n).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    summaries = head_summaries(torch.stack([previous_head, sink_head, uniform])[None])
    uniform_previous = (1 / 2 + 1 / 3 + 1 / 4) / 3
    assert summaries.previous[0].tolist() == pytest.approx([1.0, 1 / 3, uniform_previous])
    assert summaries.first[0, 1] == pytest.approx(1.0)
    assert summaries.entropy[0, :2].tolist() == pytest.approx([0.0, 0.0])
    assert summaries.entropy[0, 2] == pytest.approx((1 + 1.5849625 + 2) / 3, abs=1e-5)
    assert summaries.kind(0, 0) == "previous token"
    assert summaries.kind(0, 1) == "sink (first token)"
    rows = summaries.rows("first", descending=True)
    assert (rows[0]["layer"], rows[0]["head"]) == (0, 1)
    assert summaries.top("previous", layer=0) == (0, 0)


def test_real_model_has_previous_token_and_sink_heads(smollm2):
    summaries = attention_maps(smollm2, "The quick brown fox jumps over the lazy dog. " * 3
                               ).summaries()
    assert float(summaries.previous.max()) > 0.5  # a previous-token head exists
    assert float(summaries.first.max()) > 0.8  # and an attention sink


# -- queries and keys (the by-hand exercise) ------------------------------------------------


@pytest.mark.parametrize("name, head", [("random:tiny-gpt2", 3), ("random:tiny-llama", 3),
                                        ("smollm2-135m", 7)])
def test_layer0_queries_keys_reproduce_the_map(name, head):
    lm = cached_model(name)
    text = "Queries meet keys here."
    q, k = layer0_queries_keys(lm, text, head)  # grouped-query: head h reads KV head h // g
    n = q.shape[0]
    scores = (q @ k.T / q.shape[-1] ** 0.5).masked_fill(
        torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(scores.softmax(-1), attention_maps(lm, text).head(0, head), atol=1e-5)


# -- C8: attention of generated tokens -------------------------------------------------------


@pytest.mark.parametrize("name", ["random:tiny-gpt2", "smollm2-135m"])
def test_c8_generated_rows_equal_a_full_pass(name):
    lm = cached_model(name)
    result = generated_attention(lm, "The capital of France is", max_new_tokens=10)
    assert result.n_steps == 10 and len(result.new_ids) == 10
    all_ids = result.prompt_ids + result.new_ids
    full = forward(lm, all_ids[:-1], record_attention=True).attentions  # per layer [1,H,T,T]
    for step in range(result.n_steps):
        position = result.query_position(step)
        assert result.rows[step].shape[-1] == position + 1  # everything before, and itself
        expected = torch.stack([layer[0, :, position, : position + 1] for layer in full])
        assert torch.allclose(result.rows[step], expected, atol=1e-5)
    assert result.labels[result.query_position(3) + 1] == token_labels(
        lm.tokenizer, [result.new_ids[3]])[0]
