"""Every exercise check of the kit, in one place.

An exercise: the student writes a few lines in a marked cell, then calls its check, which
returns a `CheckResult`: shown as "Correct" or as what is off, with a hint. Solutions are
not printed unless asked for: `kvlab.checks.solution("name")`.
"""

from __future__ import annotations

import math
import numbers
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


def number(value) -> int | float | None:
    """A student's answer as a finite Python number (numpy and torch scalars accepted), or
    None for anything else: text, True/False, NaN, infinity, several values."""
    if hasattr(value, "item") and not isinstance(value, str):  # numpy / torch scalar
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # more than one element
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return value if math.isfinite(value) else None


def whole_number(value) -> int | None:
    """Like `number`, for counts and indices: an integral value (3 or 3.0), else None."""
    value = number(value)
    return int(value) if value is not None and float(value).is_integer() else None


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
    if number(row_sum) is None or whole_number(n_visible) is None:
        return wrong(f"row_sum and n_visible should be numbers (n_visible a whole number), "
                     f"got {row_sum!r} and {n_visible!r}")
    row_sum, n_visible = number(row_sum), whole_number(n_visible)
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
    index = whole_number(answer)
    if index is None or not 0 <= index < count:
        return wrong(f"{what} should be a whole number from 0 to {count - 1}, got {answer!r}")
    return index


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


# =============================================================================================
# Notebook 02 (cache mechanics): the cache append, the causal mask with a cache, cache bytes
# =============================================================================================



def _call_student(fn, *args):
    """Run the student's function; (result, None) or (None, a CheckResult saying what raised)."""
    try:
        return fn(*args), None
    except Exception as err:  # the student's code may raise anything; report it, don't crash
        return None, wrong(f"your function raised {type(err).__name__}: {err}",
                           "run it on a small example and print the shapes")


# -- Exercise: the cache append for one layer ------------------------------------------------


def check_cache_append(append_fn) -> CheckResult:
    """Check `append_fn(cache, layer, new_keys, new_values) -> (keys, values)` on small caches.

    It must write the new positions' keys/values into `cache.keys[layer]` and
    `cache.values[layer]` at positions cache.length .. cache.length+n-1, leave everything
    else untouched, and return the keys/values of all positions so far.
    """
    from .cache import KVCache

    if not callable(append_fn):
        return wrong(f"expected your function, got {type(append_fn).__name__}",
                     "pass the function itself: check_cache_append(my_append)")
    for n_cached, n_new in [(5, 1), (5, 3), (0, 4)]:
        verdict = _check_one_append(KVCache, append_fn, n_cached, n_new)
        if verdict is not None:
            return verdict
    return correct("the new keys and values land at positions P..P+n-1 of the right layer, "
                   "earlier positions stay as they were, and all P+n positions come back")


def _check_one_append(KVCache, append_fn, n_cached: int, n_new: int) -> CheckResult | None:
    batch, kv_heads, head_dim, layer = 1, 2, 4, 1
    generator = torch.Generator().manual_seed(n_cached * 10 + n_new)
    cache = KVCache(n_layers=3, n_kv_heads=kv_heads, head_dim=head_dim, max_len=12)
    for index in range(cache.n_layers):  # P positions already cached in every layer
        shape = (batch, kv_heads, n_cached, head_dim)
        cache.keys[index][:, :, :n_cached] = torch.randn(shape, generator=generator)
        cache.values[index][:, :, :n_cached] = torch.randn(shape, generator=generator)
    cache.length = n_cached
    before_keys = [t.clone() for t in cache.keys]
    before_values = [t.clone() for t in cache.values]
    new_keys = torch.randn(batch, kv_heads, n_new, head_dim, generator=generator)
    new_values = torch.randn(batch, kv_heads, n_new, head_dim, generator=generator)
    where = f"(P={n_cached} cached positions, n={n_new} new)"

    result, failure = _call_student(append_fn, cache, layer, new_keys.clone(),
                                    new_values.clone())
    if failure is not None:
        return failure
    if not (isinstance(result, tuple | list) and len(result) == 2):
        return wrong(f"your function returned {type(result).__name__}, not a pair "
                     f"(keys, values) {where}",
                     "return two tensors: the keys and the values of all positions so far")
    keys, values = result
    end = n_cached + n_new
    if cache.length != n_cached:
        return wrong(f"cache.length changed from {n_cached} to {cache.length} {where}",
                     "the append of one layer leaves cache.length alone: forward() calls "
                     "cache.advance(n) once, after every layer has appended")
    stored_keys = cache.keys[layer][:, :, n_cached:end]
    stored_values = cache.values[layer][:, :, n_cached:end]
    if torch.equal(stored_keys, new_values) and torch.equal(stored_values, new_keys):
        return wrong(f"keys and values are swapped in the cache {where}",
                     "new_keys go into cache.keys[layer], new_values into cache.values[layer]")
    if not (torch.equal(stored_keys, new_keys) and torch.equal(stored_values, new_values)):
        if n_cached and torch.equal(cache.keys[layer][:, :, :n_new], new_keys):
            return wrong(f"the new keys were written at positions 0..{n_new - 1}, over "
                         f"cached ones {where}",
                         "the new tokens come after the P cached ones: start at "
                         "cache.length, i.e. [:, :, cache.length:cache.length + n_new]")
        return wrong(f"positions {n_cached}..{end - 1} of cache.keys[{layer}] / "
                     f"cache.values[{layer}] do not hold the new keys/values {where}",
                     "write into the preallocated tensors in place: "
                     "cache.keys[layer][:, :, start:end] = new_keys (dimension 2 is position)")
    for index in range(cache.n_layers):
        untouched_keys = before_keys[index].clone()
        untouched_values = before_values[index].clone()
        if index == layer:  # only the new rows of this layer may change
            untouched_keys[:, :, n_cached:end] = cache.keys[index][:, :, n_cached:end]
            untouched_values[:, :, n_cached:end] = cache.values[index][:, :, n_cached:end]
        if not (torch.equal(cache.keys[index], untouched_keys)
                and torch.equal(cache.values[index], untouched_values)):
            return wrong(f"layer {index}'s cache changed outside positions "
                         f"{n_cached}..{end - 1} of layer {layer} {where}",
                         "touch only cache.keys[layer] and cache.values[layer], and only the "
                         "new positions: earlier keys/values never change")
    expected_shape = (batch, kv_heads, end, head_dim)
    for label, got, full in [("keys", keys, cache.keys[layer]),
                             ("values", values, cache.values[layer])]:
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != expected_shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return wrong(f"the returned {label} have shape {shape}; expected "
                         f"{list(expected_shape)}: all P+n positions so far {where}",
                         "return the filled part of the cache, cache.keys[layer][:, :, :end], "
                         "not only the new positions and not the whole preallocated tensor")
        if not torch.equal(got, full[:, :, :end]):
            return wrong(f"the returned {label} differ from the cache's first {end} "
                         f"positions {where}",
                         "return slices of the cache tensors after writing into them")
    return None


SOLUTIONS["cache_append"] = """
def my_append(cache, layer, new_keys, new_values):
    start = cache.length                    # P: positions already cached
    end = start + new_keys.shape[2]         # P + n
    cache.keys[layer][:, :, start:end] = new_keys      # [B, K, n, hd] into place
    cache.values[layer][:, :, start:end] = new_values
    return cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]  # [B, K, P+n, hd]
"""


# -- Exercise: the causal mask for n new queries over P cached positions ---------------------


def check_causal_mask(mask_fn) -> CheckResult:
    """Check `mask_fn(n_new, n_cached)` -> [n_new, n_cached + n_new] booleans, True = visible."""
    if not callable(mask_fn):
        return wrong(f"expected your function, got {type(mask_fn).__name__}",
                     "pass the function itself: check_causal_mask(my_mask)")
    for n_new, n_cached in [(3, 7), (1, 7), (4, 0), (2, 5)]:
        verdict = _check_one_mask(mask_fn, n_new, n_cached)
        if verdict is not None:
            return verdict
    return correct("new query i (at position P+i) sees keys 0..P+i: the last n rows of the "
                   "full lower-triangular mask")


def _check_one_mask(mask_fn, n_new: int, n_cached: int) -> CheckResult | None:
    n_total = n_cached + n_new
    where = f"(n={n_new} new queries, P={n_cached} cached positions)"
    got, failure = _call_student(mask_fn, n_new, n_cached)
    if failure is not None:
        return failure
    try:
        got = torch.as_tensor(got)
    except (TypeError, ValueError, RuntimeError):
        return wrong(f"your function returned {type(got).__name__}, not a tensor {where}",
                     "return a torch tensor of booleans, shape [n_new, n_cached + n_new]")
    if got.dtype.is_floating_point and bool((got == float("-inf")).any()):
        return wrong(f"your mask holds -inf values {where}; this exercise wants booleans",
                     "return True where a query may see a key and False elsewhere")
    if tuple(got.shape) == (n_total, n_new) and n_total != n_new:
        return wrong(f"your mask has shape {list(got.shape)}: rows and columns swapped {where}",
                     "one row per new query, one column per key: [n_new, n_cached + n_new]")
    if tuple(got.shape) != (n_new, n_total):
        return wrong(f"your mask has shape {list(got.shape)}; expected [{n_new}, {n_total}] "
                     f"{where}",
                     "one row per new query (n_new rows), one column per key, cached and "
                     "new (n_cached + n_new columns)")
    if not bool(((got == 0) | (got == 1)).all()):
        return wrong(f"your mask holds values other than True/False (0/1) {where}",
                     "build it from torch.ones(..., dtype=torch.bool)")
    got = got.bool()
    expected = torch.ones(n_new, n_total, dtype=torch.bool).tril(diagonal=n_cached)
    if torch.equal(got, expected):
        return None
    top_left = torch.ones(n_new, n_total, dtype=torch.bool).tril(diagonal=0)
    if n_cached and torch.equal(got, top_left):
        return wrong(f"your mask is aligned top-left {where}: the first new query sees only "
                     f"key 0, so it ignores the {n_cached} cached positions it should read",
                     f"the new queries sit at positions {n_cached}..{n_total - 1}: they are the "
                     f"LAST {n_new} rows of the full {n_total}x{n_total} lower-triangular mask "
                     f"(tril's `diagonal` argument shifts the triangle to the right)")
    if torch.equal(got, ~expected):
        return wrong(f"your mask is inverted {where}: True must mean 'may see'",
                     "query i sees key j when j <= n_cached + i")
    if torch.equal(got, expected.tril(diagonal=n_cached - 1)):
        return wrong(f"each new query misses its own key {where}",
                     "a token attends to itself: query i sees keys 0..n_cached+i inclusive")
    if bool((got & ~expected).any()):
        row, col = (got & ~expected).nonzero()[0].tolist()
        return wrong(f"new query {row} (position {n_cached + row}) may see key {col}, a later "
                     f"token {where}",
                     "causal: query i sees keys 0..n_cached+i, never a later position")
    row, col = (expected & ~got).nonzero()[0].tolist()
    return wrong(f"new query {row} (position {n_cached + row}) cannot see key {col}, which "
                 f"comes before it {where}",
                 "every cached key is visible to every new query; only later new tokens "
                 "are hidden")


SOLUTIONS["causal_mask"] = """
def my_mask(n_new, n_cached):
    n_total = n_cached + n_new
    # the last n_new rows of the full n_total x n_total lower-triangular mask:
    # query i (position n_cached + i) sees keys 0 .. n_cached + i
    return torch.ones(n_new, n_total, dtype=torch.bool).tril(diagonal=n_cached)
"""


# -- Exercise: a model's cache size by hand --------------------------------------------------


def check_cache_size(answer, model: str = "Llama-3-8B", n_tokens: int = 8192, batch: int = 1,
                     dtype: str = "float16") -> CheckResult:
    """Check a hand-computed KV cache size in bytes for a preset model (see bench.PRESETS)."""
    from .memory import dtype_bytes, preset

    spec = preset(model)
    element = dtype_bytes(dtype)
    if number(answer) is None:
        return wrong(f"expected a number of bytes (not text, NaN or infinity), got {answer!r}",
                     "write the product of the factors, e.g. answer = 2 * ...")
    answer = number(answer)

    def size(n_layers=spec.n_layers, kv_heads=spec.n_kv_heads, head_dim=spec.head_dim,
             tokens=n_tokens, n_batch=batch, element_bytes=element, kv=2) -> int:
        return kv * n_layers * kv_heads * head_dim * tokens * n_batch * element_bytes

    expected = size()
    if answer <= 0:
        return wrong(f"{answer:,} bytes: a cache holding {n_tokens:,} tokens takes more "
                     f"than that",
                     "2 (keys and values) x layers x KV heads x head_dim x tokens x batch x "
                     "bytes per element")
    if answer == expected:
        return correct(f"{model} holds {expected:,} bytes of keys and values for {n_tokens:,} "
                       f"tokens (batch {batch}, {dtype})")
    mistakes = [
        (size(kv=1), "you counted keys or values, not both",
         "the cache holds two tensors per layer: keys AND values (a factor 2)"),
        (size(kv_heads=spec.n_heads), f"you used the {spec.n_heads} query heads",
         f"{model} uses grouped-query attention: only its {spec.n_kv_heads} KV heads are "
         f"cached"),
        (size(element_bytes=4), "you used 4 bytes per element",
         f"{dtype} takes {element} byte(s) per number"),
        (size(element_bytes=element * 8), "your answer is in bits",
         "count bytes: one element is " f"{element} byte(s)"),
        (size(n_layers=1), "your answer is one layer's cache",
         f"multiply by the {spec.n_layers} layers"),
        (size(n_batch=1), "you left out the batch",
         f"each of the {batch} sequences has its own cache"),
        (size() / 2 ** 30, "your answer is in GiB", "give the number of bytes"),
        (size() / 2 ** 20, "your answer is in MiB", "give the number of bytes"),
        (size() / 1e9, "your answer is in GB", "give the number of bytes"),
    ]
    for value, what, hint in mistakes:
        if value != expected and abs(answer - value) <= 1e-9 * abs(value):
            return wrong(f"{answer:,} bytes: {what}", hint)
    return wrong(f"{answer:,} bytes is not it (off by a factor of {answer / expected:.3g})",
                 "2 (keys and values) x layers x KV heads x head_dim x tokens x batch x "
                 "bytes per element")


SOLUTIONS["cache_size"] = """
from kvlab.bench import PRESETS

spec = PRESETS["Llama-3-8B"]
# keys and values x layers x KV heads (not query heads) x head_dim x tokens x batch x bytes
answer = 2 * spec.n_layers * spec.n_kv_heads * spec.head_dim * 8192 * 1 * 2  # float16: 2 bytes
"""


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
        got = number(got) if number(got) is not None else got
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
        if number(value) is None or number(value) <= 0:
            return wrong(f"{label} must be a positive number, got {value!r}")
    bytes_per_step, min_ms = number(bytes_per_step), number(min_ms)
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
