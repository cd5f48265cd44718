"""Every exercise check of the kit, in one place.

An exercise: the student writes a few lines in a marked cell, then calls its check, which
returns a `CheckResult`: shown as "Correct" or as what is off, with a hint. Solutions are
not printed unless asked for: `kvlab.checks.solution("name")`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

import torch


@dataclass
class CheckResult:
    """The verdict of a check: `ok`, a one-line message, and a hint when not ok."""

    ok: bool
    message: str
    hint: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"Correct: {self.message}"
        text = f"Not yet: {self.message}"
        return f"{text}\nHint: {self.hint}" if self.hint else text

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.ok else "#b35900"
        body = escape(str(self)).replace("\n", "<br>")
        return f'<div style="color:{colour};font-weight:600">{body}</div>'


def correct(message: str) -> CheckResult:
    return CheckResult(True, message)


def wrong(message: str, hint: str = "") -> CheckResult:
    return CheckResult(False, message, hint)


# name -> solution text (code a student could paste), shown only on request
SOLUTIONS: dict[str, str] = {}


class Solution(str):
    """A solution's text; displays as a code block."""

    def _repr_markdown_(self) -> str:
        return f"```python\n{self}\n```"


def solution(name: str) -> Solution:
    """The solution of exercise `name` (see `SOLUTIONS` for the names)."""
    if name not in SOLUTIONS:
        raise KeyError(f"no exercise named {name!r}; known: {', '.join(sorted(SOLUTIONS))}")
    return Solution(SOLUTIONS[name].strip())


# ---------------------------------------------------------------------------------------------
# Notebook 01: attention


def _missing(answer) -> CheckResult | None:
    if answer is None or answer is Ellipsis:
        return wrong("there is no answer yet (the variable is still None or ...)",
                     "replace the placeholder in the exercise cell, run it, then run the check")
    return None


def check_predictions(n_tokens: int, row_sum, n_visible) -> CheckResult:
    """Exercise 'predictions': what each row of a map adds up to, and how many cells can be
    non-zero, for a text of n_tokens tokens."""
    for answer in (row_sum, n_visible):
        if (verdict := _missing(answer)) is not None:
            return verdict
    try:
        row_sum, n_visible = float(row_sum), int(n_visible)
    except (TypeError, ValueError):
        return wrong(f"row_sum and n_visible should be numbers, got {row_sum!r} and "
                     f"{n_visible!r}")
    if abs(row_sum - 1.0) > 1e-6:
        return wrong(f"row_sum = {row_sum:g} is not what every row adds up to",
                     "each row is the output of a softmax over the keys that query can see")
    n = n_tokens
    if n_visible == n * (n + 1) // 2:
        return correct(f"every row sums to 1, and {n_visible} of the {n * n} cells are "
                       f"visible (the lower triangle, diagonal included)")
    if n_visible == n * n:
        return wrong(f"n_visible = {n_visible} counts every cell",
                     "a decoder masks the keys after each query: no token sees the future")
    if n_visible == n * (n - 1) // 2:
        return wrong(f"n_visible = {n_visible} leaves out the diagonal",
                     "a token may attend to itself: query i sees keys 0 .. i")
    return wrong(f"n_visible = {n_visible} is not the number of visible cells for "
                 f"{n} tokens", "query i sees keys 0 .. i, i.e. i + 1 keys; add that up over "
                                "the queries")


def _softmax_rows(scores: torch.Tensor, mask: bool = True, dim: int = -1) -> torch.Tensor:
    if mask:
        n = scores.shape[-1]
        future = ~torch.ones(n, n, dtype=torch.bool).tril()
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=dim)


def check_by_hand(my_weights, q: torch.Tensor, k: torch.Tensor,
                  model_weights: torch.Tensor) -> CheckResult:
    """Exercise 'by_hand': one head's weights recomputed from its queries q [n, hd] and keys
    k [n, hd], compared with the model's map [n, n]."""
    if (verdict := _missing(my_weights)) is not None:
        return verdict
    try:
        mine = torch.as_tensor(my_weights, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        return wrong(f"my_weights should be a tensor (or array), got {type(my_weights).__name__}")
    n = model_weights.shape[0]
    if tuple(mine.shape) != (n, n):
        return wrong(f"my_weights has shape {tuple(mine.shape)}, expected ({n}, {n})",
                     "one row per query and one column per key: q @ k.T has that shape")
    if torch.allclose(mine, model_weights, atol=1e-4):
        return correct("your weights equal the model's for this head (to 1e-4): "
                       "softmax(q k^T / sqrt(d) + causal mask)")
    scores = (q @ k.T) / math.sqrt(q.shape[-1])  # [n, n]
    diagnoses = [
        (_softmax_rows(q @ k.T), "the scores were not scaled",
         "divide q @ k.T by the square root of the head width, q.shape[-1] ** 0.5"),
        (_softmax_rows(scores, mask=False), "future tokens get weight: no causal mask",
         "before the softmax, set the scores above the diagonal to -inf, e.g. with "
         "torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)"),
        (_softmax_rows(scores, dim=0), "the softmax ran over the wrong dimension",
         "each row (one query) must sum to 1: softmax(dim=-1)"),
        (_softmax_rows(scores, mask=False).tril(), "the mask was applied after the softmax",
         "mask the scores (-inf) before the softmax, so each row still sums to 1"),
    ]
    for candidate, message, hint in diagnoses:
        if torch.allclose(mine, candidate, atol=1e-4):
            return wrong(message, hint)
    difference = (mine - model_weights).abs()
    query, key = divmod(int(difference.argmax()), n)
    return wrong(f"largest difference {float(difference.max()):.3g} at query {query}, key {key}",
                 "scores = q @ k.T / sqrt(d); mask the future with -inf; softmax over the "
                 "last dimension")


def _index_answer(answer, count: int, what: str) -> CheckResult | int:
    if (verdict := _missing(answer)) is not None:
        return verdict
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < count:
        return wrong(f"{what} should be a whole number from 0 to {count - 1}, got {answer!r}")
    return answer


def check_previous_token_head(answer, maps, layer: int = 0) -> CheckResult:
    """Exercise 'previous_token_head': the head of `layer` with the most weight on the
    token just before each query."""
    head = _index_answer(answer, maps.n_heads, "the head")
    if isinstance(head, CheckResult):
        return head
    previous = maps.summaries().previous[layer]  # [H]
    best = float(previous.max())
    if float(previous[head]) >= best - 1e-6:
        return correct(f"head {head} of layer {layer} puts on average {best:.2f} of each "
                       f"query's weight on the previous token, more than any other head")
    return wrong(f"head {head} puts on average {float(previous[head]):.2f} on the previous "
                 f"token; another head of layer {layer} puts more",
                 "the previous token is the cell just left of the diagonal: average "
                 "maps.weights[layer, h].diagonal(-1) for each head h, or sort the summary "
                 "table by 'previous'")


def check_sink_layer(answer, maps) -> CheckResult:
    """Exercise 'sink_layer': the layer whose heads, on average, put the most weight on the
    first token."""
    layer = _index_answer(answer, maps.n_layers, "the layer")
    if isinstance(layer, CheckResult):
        return layer
    per_layer = maps.summaries().first.mean(dim=1)  # [L]
    best = float(per_layer.max())
    if float(per_layer[layer]) >= best - 1e-6:
        return correct(f"layer {layer}'s heads put on average {best:.2f} of their weight on "
                       f"the first token: the strongest attention sink of this text")
    return wrong(f"layer {layer}'s heads put on average {float(per_layer[layer]):.2f} on the "
                 f"first token; another layer puts more",
                 "average maps.weights[layer, :, 1:, 0] (every head, every query but the "
                 "first) for each layer, or use maps.summaries().first.mean(dim=1)")


SOLUTIONS.update({
    "predictions": """
row_sum = 1.0                      # each row is a softmax: its weights add up to 1
n_visible = n * (n + 1) // 2       # query i sees keys 0..i: 1 + 2 + ... + n
""",
    "by_hand": """
n, d = q.shape
scores = q @ k.T / d ** 0.5                                    # [n, n]
future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
scores = scores.masked_fill(future, float("-inf"))             # no peeking ahead
my_weights = scores.softmax(dim=-1)                            # each row sums to 1
""",
    "previous_token_head": """
previous = [maps.weights[0, h].diagonal(-1).mean().item() for h in range(maps.n_heads)]
my_head = max(range(maps.n_heads), key=lambda h: previous[h])
""",
    "sink_layer": """
first = maps.weights[:, :, 1:, 0].mean(dim=(1, 2))             # [layers]
my_layer = int(first.argmax())
""",
})
