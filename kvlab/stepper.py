"""`DecodeStepper`: greedy decoding one step at a time, with the KV cache open for inspection.

It drives the kit's own decoder (`decoder.forward`) and a `KVCache`; it adds no second
forward pass. Step 0 is the prefill (the whole prompt in one pass); every later step feeds
the one token chosen last. Each step is kept as a `StepRecord`, so a notebook can look back
at any step without recomputing: the cache rows of earlier positions never change, so the
keys and values of step s are the first `n_total` rows of the cache as it is now.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bench import ModelSpec, spec_of, step_cost
from .cache import KVCache
from .decoder import forward, prepare
from .generate import check_length, pick_next, prompt_to_ids

# The attention maps of a long prefill are big (layers x heads x n x n floats): beyond this
# many bytes only the last query rows of each map are kept (the last row chooses the token).
ATTENTION_BUDGET_BYTES = 64 * 2 ** 20


@dataclass
class StepRecord:
    """What one forward pass of the stepper fed, computed and chose."""

    index: int  # 0 = prefill, then 1, 2, ... one token each
    fed_ids: list[int]  # the n tokens fed at this step
    n_cached: int  # P: positions already in the cache before this step (reused)
    next_id: int  # the token chosen from the last position's logits (greedy)
    logits: torch.Tensor  # [V], the last position's logits
    attentions: list[torch.Tensor]  # per layer [H, rows, T]: the last `rows` new queries
    flops: int  # FLOPs of this step with the cache (cost model)
    flops_recomputing: int  # FLOPs of the same step without a cache (whole sequence again)

    @property
    def kind(self) -> str:
        return "prefill" if self.index == 0 else "decode"

    @property
    def n_new(self) -> int:
        """n: positions computed at this step."""
        return len(self.fed_ids)

    @property
    def n_total(self) -> int:
        """T = P + n: keys and values attended over at this step."""
        return self.n_cached + self.n_new

    @property
    def first_query_kept(self) -> int:
        """Position of the first query row kept in `attentions` (P unless a long prefill)."""
        return self.n_total - self.attentions[0].shape[1]

    @property
    def positions(self) -> range:
        """Positions of the tokens fed at this step: P .. P+n-1."""
        return range(self.n_cached, self.n_total)


class DecodeStepper:
    """Greedy decoding that advances one step per `step()` call; `reset()` starts over."""

    def __init__(self, lm, prompt, max_new_tokens: int = 32):
        self.lm = lm
        self.spec: ModelSpec = spec_of(lm)
        self.max_new_tokens = max_new_tokens
        prepare(lm)
        self.reset(prompt)

    # -- the state machine ------------------------------------------------------------------

    def reset(self, prompt=None) -> None:
        """Start over from an empty cache, with a new prompt (text or ids) or the same one."""
        prompt_ids = self.prompt_ids if prompt is None else prompt_to_ids(self.lm, prompt)
        check_length(self.lm, len(prompt_ids), self.max_new_tokens)
        self.prompt_ids: list[int] = prompt_ids
        self.cache = KVCache.for_model(self.lm, max_len=len(prompt_ids) + self.max_new_tokens)
        self.steps: list[StepRecord] = []

    def step(self) -> StepRecord:
        """Advance one step: the prefill first, then one new token through the cache."""
        if self.done:
            raise ValueError(f"this stepper has made its max_new_tokens={self.max_new_tokens} "
                             f"tokens; reset() to start over, or create one with a larger "
                             f"max_new_tokens")
        n_cached = self.cache.length
        fed = self.prompt_ids if not self.steps else [self.steps[-1].next_id]
        out = forward(self.lm, fed, self.cache, last_only=True, record_attention=True)
        logits = out.logits[0, -1]  # [V]
        record = StepRecord(
            index=len(self.steps), fed_ids=list(fed), n_cached=n_cached,
            next_id=pick_next(logits, 0.0, None, None), logits=logits,
            attentions=_kept_rows(out.attentions),  # per layer [H, rows <= n, T]
            flops=self._flops(n_cached, len(fed), cached=True),
            flops_recomputing=self._flops(n_cached, len(fed), cached=False))
        self.steps.append(record)
        return record

    def _flops(self, n_cached: int, n_new: int, cached: bool) -> int:
        """The cost model's FLOPs for a pass that ends at position n_cached + n_new - 1."""
        last_position = n_cached + n_new - 1
        if n_cached == 0:  # the prefill: a full pass over the prompt either way
            return step_cost(self.spec, last_position, cached=False).flops
        return step_cost(self.spec, last_position, cached=cached).flops

    @property
    def done(self) -> bool:
        """True once max_new_tokens tokens have been chosen."""
        return len(self.steps) >= self.max_new_tokens

    # -- what the notebook looks at ---------------------------------------------------------

    @property
    def new_ids(self) -> list[int]:
        """The tokens chosen so far, one per step."""
        return [record.next_id for record in self.steps]

    @property
    def ids(self) -> list[int]:
        """Prompt and chosen tokens, in order."""
        return self.prompt_ids + self.new_ids

    def record(self, step: int | None = None) -> StepRecord:
        """The record of `step` (default: the latest); a clear error for a step not taken."""
        if not self.steps:
            raise ValueError("no step taken yet: call step() first (step 0 is the prefill)")
        if step is None:
            return self.steps[-1]
        if not isinstance(step, int) or not 0 <= step < len(self.steps):
            raise ValueError(f"step must be an integer in 0..{len(self.steps) - 1} (the steps "
                             f"taken so far), got {step!r}")
        return self.steps[step]

    def kv_head_of(self, head: int) -> int:
        """The KV head that query head `head` reads (grouped-query attention: h // group)."""
        self._check_index("head", head, self.lm.n_heads)
        return head // (self.lm.n_heads // self.lm.n_kv_heads)

    def keys_values(self, layer: int, head: int, step: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached keys and values read by query head `head` at `step`: [T, hd] each."""
        self._check_index("layer", layer, self.lm.n_layers)
        n_total = self.record(step).n_total
        kv_head = self.kv_head_of(head)
        keys = self.cache.keys[layer][0, kv_head, :n_total]  # [T, hd]
        values = self.cache.values[layer][0, kv_head, :n_total]  # [T, hd]
        return keys, values

    def attention(self, layer: int, head: int, step: int | None = None) -> torch.Tensor:
        """Attention of the step's new queries over all keys so far: [rows, T].

        rows = n, except for a prefill too long to keep whole: then its last rows only
        (from position `record.first_query_kept`).
        """
        self._check_index("layer", layer, self.lm.n_layers)
        self._check_index("head", head, self.lm.n_heads)
        return self.record(step).attentions[layer][head]

    def _check_index(self, label: str, value, count: int) -> None:
        if not isinstance(value, int) or not 0 <= value < count:
            raise ValueError(f"{label} must be an integer in 0..{count - 1} for "
                             f"{self.lm.name}, got {value!r}")

    def totals(self, step: int | None = None) -> dict[str, int]:
        """Work done up to and including `step`: positions computed vs reused, FLOPs."""
        upto = self.steps[: self.record(step).index + 1]
        return dict(
            positions_computed=sum(r.n_new for r in upto),
            positions_reused=sum(r.n_cached for r in upto),
            positions_recomputing=sum(r.n_total for r in upto),
            flops=sum(r.flops for r in upto),
            flops_recomputing=sum(r.flops_recomputing for r in upto))

    def shapes(self, step: int | None = None) -> list[tuple[str, tuple[int, ...], str]]:
        """(tensor, shape, what it holds) for every tensor of one layer's attention at `step`."""
        record = self.record(step)
        lm, n, total = self.lm, record.n_new, record.n_total
        batch, heads, kv_heads, hd = 1, lm.n_heads, lm.n_kv_heads, lm.head_dim
        rows = [
            ("token ids fed", (batch, n), f"{record.kind}: {n} token(s) at positions "
             f"{record.n_cached}..{total - 1}"),
            ("x (layer input)", (batch, n, lm.d_model), "one vector per new token"),
            ("q", (batch, heads, n, hd), "queries of the new tokens only"),
            ("k_new, v_new", (batch, kv_heads, n, hd), "keys/values of the new tokens"),
            ("cache.keys[l], cache.values[l]", tuple(self.cache.keys[0].shape),
             f"preallocated storage; rows 0..{total - 1} filled"),
            ("k, v after append", (batch, kv_heads, total, hd),
             f"{record.n_cached} reused + {n} new positions"),
        ]
        if kv_heads != heads:
            rows.append(("k, v after repeat_interleave", (batch, heads, total, hd),
                         f"each KV head shared by {heads // kv_heads} query heads"))
        rows += [
            ("scores, probs", (batch, heads, n, total), "each new query over every key"),
            ("attention output", (batch, n, lm.d_model), "back to one vector per new token"),
            ("logits (last position)", (batch, lm.vocab_size), "scores for the next token"),
        ]
        return rows


def _kept_rows(per_layer: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each layer's [1, H, n, T] attention without the batch dimension, within the budget."""
    layers, _, heads, n_new, n_total = len(per_layer), *per_layer[0].shape
    row_bytes = layers * heads * n_total * per_layer[0].element_size()
    rows = max(1, min(n_new, ATTENTION_BUDGET_BYTES // row_bytes))
    return [probs[0, :, n_new - rows:].clone() for probs in per_layer]
