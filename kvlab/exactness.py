"""Evidence that the KV cache is exact: two runs compared step by step, and the reason why.

`compare_runs` lines up two generations (cached vs uncached, or kvlab vs transformers) and
reports, per step, both tokens and the largest logit difference. `earlier_kv_change` shows
why reusing is allowed: under a causal mask, appending a token leaves the keys and values
of every earlier position as they were, so recomputing them is wasted work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import KVCache
from .decoder import forward
from .generate import GenerationResult, prompt_to_ids

TOLERANCE = 1e-4  # float32 logits of two exact methods agree far better than this


@dataclass
class StepComparison:
    step: int
    token_a: int
    token_b: int
    max_logit_diff: float


@dataclass
class RunComparison:
    """Two generations of the same prompt, step by step."""

    label_a: str
    label_b: str
    rows: list[StepComparison]

    @property
    def same_tokens(self) -> bool:
        return all(row.token_a == row.token_b for row in self.rows)

    @property
    def max_logit_diff(self) -> float:
        return max(row.max_logit_diff for row in self.rows)

    @property
    def exact(self) -> bool:
        """Same tokens, and logits within TOLERANCE at every step."""
        return self.same_tokens and self.max_logit_diff < TOLERANCE

    def table(self, decode) -> list[tuple[int, str, str, str]]:
        """Rows (step, token a, token b, largest |logit difference|), tokens as text."""
        return [(row.step, repr(decode([row.token_a])), repr(decode([row.token_b])),
                 f"{row.max_logit_diff:.2e}") for row in self.rows]


def compare_runs(a: GenerationResult, b: GenerationResult, label_a: str = "a",
                 label_b: str = "b") -> RunComparison:
    """Line up two generations of the same prompt that both kept their logits."""
    if a.logits is None or b.logits is None:
        raise ValueError("both runs need their logits: generate with return_logits=True")
    if a.prompt_ids != b.prompt_ids:
        raise ValueError("the two runs started from different prompts; compare runs of one "
                         "prompt")
    steps = min(len(a.new_ids), len(b.new_ids))
    diffs = (a.logits[:steps] - b.logits[:steps]).abs().amax(dim=-1)  # [steps]
    rows = [StepComparison(s, a.new_ids[s], b.new_ids[s], float(diffs[s]))
            for s in range(steps)]
    return RunComparison(label_a, label_b, rows)


@dataclass
class EarlierKV:
    """Keys/values of positions 0..P-1, from a pass over P tokens vs one over P+1 tokens."""

    n_earlier: int  # P
    max_key_diff: float  # largest |difference| over every layer, head and channel
    max_value_diff: float

    @property
    def max_diff(self) -> float:
        return max(self.max_key_diff, self.max_value_diff)


def earlier_kv_change(lm, prompt) -> EarlierKV:
    """Recompute from scratch with one more token; compare earlier positions' keys/values.

    Both passes run without reusing anything (each fills a fresh cache from empty), so the
    second one really recomputes positions 0..P-1 with the extra token present.
    """
    ids = prompt_to_ids(lm, prompt)
    if len(ids) < 2:
        raise ValueError(f"the prompt needs at least 2 tokens (earlier ones + one appended), "
                         f"got {len(ids)}")
    n_earlier = len(ids) - 1
    without_last = KVCache.for_model(lm, max_len=len(ids))
    forward(lm, ids[:-1], without_last, last_only=True)  # positions 0..P-1
    with_last = KVCache.for_model(lm, max_len=len(ids))
    forward(lm, ids, with_last, last_only=True)  # positions 0..P, from scratch
    key_diff = _max_diff(without_last.keys, with_last.keys, n_earlier)
    value_diff = _max_diff(without_last.values, with_last.values, n_earlier)
    return EarlierKV(n_earlier, key_diff, value_diff)


def _max_diff(first: list[torch.Tensor], second: list[torch.Tensor], n_positions: int) -> float:
    """Largest |a - b| over the first n_positions rows of every layer's tensor."""
    return max(float((a[:, :, :n_positions] - b[:, :, :n_positions]).abs().max())
               for a, b in zip(first, second, strict=True))
