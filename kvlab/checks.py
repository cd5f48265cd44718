"""Every exercise check of the kit, in one place.

An exercise: the student writes a few lines in a marked cell, then calls its check, which
returns a `CheckResult`: shown as "Correct" or as what is off, with a hint. Solutions are
not printed unless asked for: `kvlab.checks.solution("name")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape


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


# =============================================================================================
# Notebook 03 (benchmark): the uncached/cached work ratio, the bytes-per-step bound
# =============================================================================================

_RATIO_CASES = [(32, 256), (8, 100), (100, 8), (1, 1), (5, 2)]


def work_ratio_reference(prompt_len: int, new_tokens: int) -> float:
    """Token rows pushed through the model without the cache, divided by with it."""
    cached = prompt_len + (new_tokens - 1)  # prefill, then one row per step
    uncached = sum(prompt_len + step for step in range(new_tokens))  # every token, every step
    return uncached / cached


def _ratio_mistake(work_ratio) -> str:
    """A hint for the usual slips, recognised by what the student's function returns."""
    prompt_len, new_tokens = 32, 256
    got = work_ratio(prompt_len, new_tokens)
    right = work_ratio_reference(prompt_len, new_tokens)
    no_prefill = (sum(prompt_len + s for s in range(1, new_tokens))) / (new_tokens - 1)
    no_prompt = (new_tokens + 1) / 2
    if isinstance(got, (int, float)) and abs(got * right - 1) < 1e-6:
        return "your ratio is upside down: divide the uncached work by the cached work"
    if isinstance(got, (int, float)) and abs(got - no_prefill) < 1e-6 * no_prefill:
        return ("you left out step 0: both loops start by running the whole prompt "
                "(the prefill), so count it on both sides")
    if isinstance(got, (int, float)) and abs(got - no_prompt) < 1e-6 * no_prompt:
        return ("the uncached loop recomputes the prompt too: step s runs prompt_len + s rows, "
                "not just the s new tokens")
    return ("count token rows: step 0 runs prompt_len rows in both loops; then the cached "
            "loop runs 1 row per step, the uncached loop prompt_len + s rows at step s")


def check_work_ratio(work_ratio) -> CheckResult:
    """Exercise `work_ratio`: uncached / cached token rows for a prompt and N new tokens."""
    if not callable(work_ratio):
        return wrong(f"pass your function itself, e.g. check_work_ratio(work_ratio); got "
                     f"{type(work_ratio).__name__}")
    for prompt_len, new_tokens in _RATIO_CASES:
        try:
            got = work_ratio(prompt_len, new_tokens)
        except Exception as err:  # the student's code may raise anything: report it
            return wrong(f"work_ratio({prompt_len}, {new_tokens}) raised "
                         f"{type(err).__name__}: {err}", "try it by hand on a small case first")
        right = work_ratio_reference(prompt_len, new_tokens)
        if got is None or got is ...:
            return wrong("work_ratio returns nothing yet: replace `...` with your formula",
                         "count token rows pushed through the model by each loop")
        if not isinstance(got, (int, float)) or abs(got - right) > 1e-6 * right:
            return wrong(f"work_ratio({prompt_len}, {new_tokens}) = {got!r}, expected "
                         f"{right:.4g}", _ratio_mistake(work_ratio))
    example = work_ratio_reference(32, 256)
    return correct(f"for 32 prompt + 256 new tokens the uncached loop pushes {example:.0f}x "
                   f"as many token rows through the model; the gap grows linearly with N, so "
                   f"the uncached total time grows as N^2")


def check_decode_bound(bytes_per_step, min_ms, spec, position: int,
                       bytes_per_s: float) -> CheckResult:
    """Exercise `decode_bound`: bytes a cached step reads at `position`, and the least time."""
    from .bench import step_cost

    if bytes_per_step is ... or bytes_per_step is None or min_ms is ... or min_ms is None:
        return wrong("fill in bytes_per_step and min_ms (replace the `...`)",
                     "bytes: every weight matrix once, plus the whole KV cache so far")
    for label, value in (("bytes_per_step", bytes_per_step), ("min_ms", min_ms)):
        if not isinstance(value, (int, float)) or value <= 0:
            return wrong(f"{label} must be a positive number, got {value!r}")
    cost = step_cost(spec, position, cached=True)
    right_bytes = cost.bytes_moved
    if abs(bytes_per_step - right_bytes) > 1e-9 * right_bytes:  # whole bytes: exact
        return wrong(f"bytes_per_step = {bytes_per_step:,.0f}, expected {right_bytes:,.0f}",
                     _bytes_mistake(bytes_per_step, spec, position, cost))
    right_ms = right_bytes / bytes_per_s * 1e3
    if abs(min_ms - right_ms) > 0.01 * right_ms:
        hint = ("that is in seconds: multiply by 1000 for milliseconds"
                if abs(min_ms * 1e3 - right_ms) < 0.01 * right_ms
                else "time = bytes / (bytes per second), then x 1000 for milliseconds")
        return wrong(f"min_ms = {min_ms:.4g}, expected {right_ms:.4g}", hint)
    share = cost.cache_bytes / right_bytes
    return correct(f"{right_bytes / 1e6:.1f} MB per step ({share:.1%} of it the KV cache), so "
                   f"no cached step can beat {right_ms:.2f} ms on this machine; the FLOPs "
                   f"({cost.flops / 1e6:.0f} M) are only {cost.flops_per_byte:.2f} per byte")


def _bytes_mistake(got: float, spec, position: int, cost) -> str:
    kv_per_token = 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * 4
    if abs(got - cost.weight_bytes) < 0.01 * cost.weight_bytes:
        return "you counted the weights only: the step also reads the KV cache of every position"
    if abs(got * 4 - cost.bytes_moved) < 0.01 * cost.bytes_moved:
        return "those are numbers, not bytes: each float32 number takes 4 bytes"
    with_query_heads = cost.weight_bytes + kv_per_token * spec.n_heads // spec.n_kv_heads * (
        position + 1)
    if spec.n_heads != spec.n_kv_heads and abs(got - with_query_heads) < 0.01 * got:
        return (f"the cache holds n_kv_heads = {spec.n_kv_heads} heads, not n_heads = "
                f"{spec.n_heads} (grouped-query attention shares them)")
    if got == cost.weight_bytes + kv_per_token * position:
        return f"at position {position} the step attends over position + 1 = {position + 1} keys"
    return ("weights: spec.matmul_params x 4 bytes; cache: 2 (K and V) x n_layers x "
            "n_kv_heads x head_dim x (position + 1) x 4 bytes")


SOLUTIONS["work_ratio"] = """
def work_ratio(prompt_len, new_tokens):
    cached = prompt_len + (new_tokens - 1)            # prefill, then 1 row per step
    uncached = sum(prompt_len + s for s in range(new_tokens))  # all tokens so far, every step
    return uncached / cached
"""

SOLUTIONS["decode_bound"] = """
weights = spec.matmul_params * 4                      # every matrix once, 4 bytes per float32
cache = 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * (position + 1) * 4
bytes_per_step = weights + cache
min_ms = bytes_per_step / bytes_per_s * 1000
"""
