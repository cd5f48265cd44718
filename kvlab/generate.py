"""The decode loop: prefill the prompt, then one token per step, with or without the KV cache.

`generate` runs kvlab's own decoder; `hf_generate` runs the same request through transformers'
`generate`, as the reference to compare against. Both return a `GenerationResult` with one
timing per generated token (the first, which includes the prompt's prefill, included).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .cache import KVCache
from .decoder import forward, prepare


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    new_ids: list[int]
    text: str  # the decoded new tokens
    step_times_s: list[float]  # one per new token; step 0 includes the prompt's prefill
    cache_bytes: int  # bytes held by the KV cache at the end (0 without a cache)
    cached: bool
    # attentions[step][layer]: [H, n, T] probabilities of the step's new tokens over all
    # tokens so far (n = prompt length at step 0, else 1); recorded on request only.
    attentions: list[list[torch.Tensor]] | None = None
    logits: torch.Tensor | None = field(default=None, repr=False)  # [steps, V], on request

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.new_ids


def prompt_to_ids(lm, prompt) -> list[int]:
    """Token ids of one prompt given as text or as a sequence of ids; a clear error otherwise."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty: give at least one character of text")
        ids = lm.encode(prompt)
        if not ids:
            raise ValueError(f"prompt {prompt!r} gives no tokens: give at least one character "
                             f"of text")
        return ids
    if hasattr(prompt, "tolist") and hasattr(prompt, "shape"):  # a tensor or numpy array
        if len(prompt.shape) == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if len(prompt.shape) != 1:
            raise ValueError(f"one prompt is expected; got an array of shape "
                             f"{tuple(prompt.shape)} (a batch?). Pass one text or one "
                             f"list of token ids.")
        prompt = prompt.tolist()
    if isinstance(prompt, Sequence) and prompt and all(isinstance(t, str) for t in prompt):
        raise ValueError(f"one prompt is expected, got a list of {len(prompt)} texts. Pass "
                         f"one text, e.g. prompt={prompt[0]!r}")
    if isinstance(prompt, (list, tuple)) and prompt and all(_is_int(t) for t in prompt):
        bad = [t for t in prompt if not 0 <= t < lm.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary "
                             f"0..{lm.vocab_size - 1}")
        return [int(t) for t in prompt]
    raise ValueError(f"prompt must be a non-empty text or list of token ids, got {prompt!r:.80}")


def _is_int(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_length(lm, n_prompt: int, max_new_tokens: int) -> None:
    """Refuse, before any work, a request that would not fit in the model's context."""
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    total = n_prompt + max_new_tokens
    if total > lm.max_positions:
        raise ValueError(
            f"prompt ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) = {total} tokens "
            f"exceeds {lm.name}'s context limit of {lm.max_positions} tokens; shorten the "
            f"prompt or ask for at most {max(lm.max_positions - n_prompt, 0)} new tokens")


def check_request(lm, prompt, max_new_tokens, temperature, top_k, seed) -> list[int]:
    """Every check of a generation request, before any work: returns the prompt's ids."""
    prompt_ids = prompt_to_ids(lm, prompt)
    check_length(lm, len(prompt_ids), max_new_tokens)
    if (not isinstance(temperature, numbers.Real) or isinstance(temperature, bool)
            or not math.isfinite(temperature) or temperature < 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got "
                         f"{temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or a positive integer, got {top_k!r}")
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    return prompt_ids


def pick_next(logits: torch.Tensor, temperature: float, top_k: int | None,
              generator: torch.Generator) -> int:
    """Next token from one position's logits [V]: argmax at temperature 0, else a sample."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def generate(lm, prompt, max_new_tokens: int = 32, cache: bool = True,
             temperature: float = 0.0, top_k: int | None = None, seed: int = 0,
             record_attention: bool = False, stop_at_eos: bool = False,
             return_logits: bool = False) -> GenerationResult:
    """Generate `max_new_tokens` tokens with kvlab's decoder.

    cache=True: prefill the prompt once, then feed one token per step, reusing the keys and
    values of earlier positions. cache=False: recompute the whole sequence every step.
    Exactly max_new_tokens tokens are made unless stop_at_eos=True.
    """
    prompt_ids = check_request(lm, prompt, max_new_tokens, temperature, top_k, seed)
    generator = torch.Generator().manual_seed(seed)
    prepare(lm)  # one-time weight arrangement, kept out of the step timings
    kv = KVCache.for_model(lm, max_len=len(prompt_ids) + max_new_tokens) if cache else None

    ids = list(prompt_ids)
    new_ids, step_times, attentions, step_logits = [], [], [], []
    for step in range(max_new_tokens):
        start = time.perf_counter_ns()
        if kv is not None:  # step 0 feeds the whole prompt (prefill), later steps one token
            feed = ids if step == 0 else ids[-1:]
            out = forward(lm, feed, kv, last_only=True, record_attention=record_attention)
        else:  # no cache: the whole sequence, every step
            out = forward(lm, ids, last_only=True, record_attention=record_attention)
        next_id = pick_next(out.logits[0, -1], temperature, top_k, generator)
        step_times.append((time.perf_counter_ns() - start) / 1e9)

        ids.append(next_id)
        new_ids.append(next_id)
        if return_logits:
            step_logits.append(out.logits[0, -1])
        if record_attention:
            attentions.append(_new_token_rows(out.attentions, step, kv is not None))
        if stop_at_eos and next_id == lm.tokenizer.eos_token_id:
            break

    return GenerationResult(
        prompt_ids=prompt_ids, new_ids=new_ids, text=lm.decode(new_ids),
        step_times_s=step_times, cache_bytes=kv.nbytes if kv is not None else 0,
        cached=cache, attentions=attentions if record_attention else None,
        logits=torch.stack(step_logits) if return_logits else None)


def _new_token_rows(per_layer: list[torch.Tensor], step: int, cached: bool):
    """Each layer's attention rows of the tokens fed at this step, batch dimension dropped."""
    if cached or step == 0:
        return [probs[0] for probs in per_layer]  # [H, n_new, T]
    return [probs[0, :, -1:] for probs in per_layer]  # uncached: the last row is the new token


# ---------------------------------------------------------------------------------------------
# The reference: transformers' own generate


class _StepClock:
    """A generate() streamer that timestamps every token as it is produced."""

    def __init__(self):
        self.times_ns: list[int] = []

    def put(self, value) -> None:
        self.times_ns.append(time.perf_counter_ns())

    def end(self) -> None:
        pass


def hf_generate(lm, prompt, max_new_tokens: int = 32, cache: bool = True,
                temperature: float = 0.0, top_k: int | None = None, seed: int = 0,
                return_logits: bool = False) -> GenerationResult:
    """The same request through transformers' `generate`, on its fastest default path.

    Attention runs with SDPA (switched from the eager attention used for attention views,
    then switched back), with transformers' own cache or none; EOS never stops it early.
    """
    from transformers import GenerationConfig

    prompt_ids = check_request(lm, prompt, max_new_tokens, temperature, top_k, seed)
    model = lm.model
    sampling = temperature > 0
    # Fresh configs: none of the checkpoint's own generation settings (repetition penalty,
    # no-repeat n-grams, ...) may change what is compared.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, use_cache=cache, do_sample=sampling,
        temperature=temperature if sampling else None, top_k=top_k if sampling else None,
        top_p=None, eos_token_id=None, pad_token_id=lm.tokenizer.eos_token_id,
        output_logits=return_logits, return_dict_in_generate=True)
    ids = torch.tensor([prompt_ids], device=model.device)
    clock = _StepClock()
    previous, own_config = model.config._attn_implementation, model.generation_config
    model.set_attn_implementation("sdpa")
    model.generation_config = GenerationConfig()  # else generate() merges the checkpoint's
    try:
        torch.manual_seed(seed)
        with torch.inference_mode():
            start = time.perf_counter_ns()
            # every prompt position is real text: without this mask, transformers would
            # mask prompt tokens that equal the pad (= EOS) token
            out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 generation_config=config, streamer=clock)
    finally:
        model.set_attn_implementation(previous)
        model.generation_config = own_config
    # clock.times_ns[0] is the prompt being streamed out, then one stamp per new token
    stamps = [start] + clock.times_ns[1:]
    step_times = [(b - a) / 1e9 for a, b in zip(stamps, stamps[1:], strict=False)]
    new_ids = out.sequences[0, len(prompt_ids):].tolist()
    cache_bytes = _hf_cache_bytes(out) if cache else 0
    return GenerationResult(
        prompt_ids=prompt_ids, new_ids=new_ids, text=lm.decode(new_ids),
        step_times_s=step_times, cache_bytes=cache_bytes, cached=cache,
        logits=torch.cat(out.logits) if return_logits else None)


def _hf_cache_bytes(out) -> int:
    cache = out.get("cache")  # transformers 5 names it `cache` (was `past_key_values`)
    if cache is None:
        return 0
    return sum(layer.keys.numel() * layer.keys.element_size()
               + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers if getattr(layer, "keys", None) is not None)
