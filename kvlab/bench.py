"""Timing harness and analytic cost model for cached and uncached decoding.

Measuring: `perf_counter_ns`, a warm-up run before timing (the first call's allocations are
never timed as a step), several repeats, medians and spread, and every step's time kept so
per-position curves can be drawn. The same harness times transformers' `generate` as the
reference, and a `floor`: one pass of every weight matrix through a matrix-vector product,
the least work any batch-1 decode step must do.

Cost model: FLOPs and bytes moved per decode step, with and without the cache, and cache
bytes, for any model spec (a loaded model or a preset from public configs).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime

import torch

MODES = ("kvlab-cache", "kvlab-nocache", "hf-cache", "hf-nocache")
FLOOR = "floor"
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}

# ---------------------------------------------------------------------------------------------
# Model specs and the cost model


@dataclass(frozen=True)
class ModelSpec:
    """The shape facts the cost model needs."""

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    d_ff: int
    vocab_size: int
    gated_mlp: bool  # Llama's gate/up/down MLP (3 matrices) vs GPT-2's up/down (2)
    tied_embeddings: bool = True

    def __post_init__(self):
        for label in ("n_layers", "n_heads", "n_kv_heads", "head_dim", "d_model", "d_ff",
                      "vocab_size"):
            value = getattr(self, label)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                             f"({self.n_kv_heads}): each KV head serves a whole group")

    @property
    def layer_matmul_params(self) -> int:
        """Weights one layer multiplies by: Q, K, V, O projections and the MLP."""
        attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = (3 if self.gated_mlp else 2) * self.d_model * self.d_ff
        return attn + mlp

    @property
    def matmul_params(self) -> int:
        """Weights read by one decode step: every layer's matrices plus the LM head."""
        return self.n_layers * self.layer_matmul_params + self.d_model * self.vocab_size

    @property
    def n_params(self) -> int:
        """All parameters (embeddings counted once when tied to the LM head; norms ignored)."""
        embeddings = self.vocab_size * self.d_model * (1 if self.tied_embeddings else 2)
        return self.n_layers * self.layer_matmul_params + embeddings


def spec_of(lm) -> ModelSpec:
    """The ModelSpec of a loaded model."""
    config = lm.model.config
    d_ff = (getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
            or 4 * lm.d_model)
    return ModelSpec(lm.name, lm.n_layers, lm.n_heads, lm.n_kv_heads, lm.head_dim, lm.d_model,
                     d_ff, lm.vocab_size, gated_mlp=lm.family == "llama",
                     tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)))


# Public configs (config.json on the Hugging Face hub), for calculators and the cost model.
PRESETS: dict[str, ModelSpec] = {
    "GPT-2 small": ModelSpec("GPT-2 small", 12, 12, 12, 64, 768, 3072, 50257, False),
    "DistilGPT-2": ModelSpec("DistilGPT-2", 6, 12, 12, 64, 768, 3072, 50257, False),
    "SmolLM2-135M": ModelSpec("SmolLM2-135M", 30, 9, 3, 64, 576, 1536, 49152, True),
    "Llama-2-7B": ModelSpec("Llama-2-7B", 32, 32, 32, 128, 4096, 11008, 32000, True, False),
    "Llama-3-8B": ModelSpec("Llama-3-8B", 32, 32, 8, 128, 4096, 14336, 128256, True, False),
}


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, n_tokens: int,
                   batch: int = 1, bytes_per_element: int = 4) -> int:
    """2 (keys and values) x layers x batch x kv_heads x head_dim x tokens x element size."""
    for label, value in [("n_layers", n_layers), ("n_kv_heads", n_kv_heads),
                         ("head_dim", head_dim), ("batch", batch),
                         ("bytes_per_element", bytes_per_element)]:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if not isinstance(n_tokens, numbers.Integral) or n_tokens < 0:
        raise ValueError(f"n_tokens must be an integer >= 0, got {n_tokens!r}")
    return 2 * n_layers * batch * n_kv_heads * head_dim * n_tokens * bytes_per_element


def spec_cache_bytes(spec: ModelSpec, n_tokens: int, batch: int = 1,
                     bytes_per_element: int = 4) -> int:
    return kv_cache_bytes(spec.n_layers, spec.n_kv_heads, spec.head_dim, n_tokens, batch,
                          bytes_per_element)


@dataclass(frozen=True)
class StepCost:
    flops: int  # multiply-adds count 2
    weight_bytes: int  # weights streamed from memory
    cache_bytes: int  # KV cache read (cached mode)

    @property
    def bytes_moved(self) -> int:
        return self.weight_bytes + self.cache_bytes

    @property
    def flops_per_byte(self) -> float:
        return self.flops / self.bytes_moved


def step_cost(spec: ModelSpec, position: int, cached: bool,
              bytes_per_element: int = 4) -> StepCost:
    """Work of the decode step that produces the token after `position` earlier tokens.

    Cached: one new token through every matrix, attending over position+1 keys.
    Uncached: all position+1 tokens through every matrix, causal attention over all of them;
    the LM head only for the last token (as both kvlab and transformers do).
    """
    if not isinstance(position, int) or position < 0:
        raise ValueError(f"position must be an integer >= 0, got {position!r}")
    n_keys = position + 1
    attn_width = spec.n_heads * spec.head_dim
    layers_params = spec.n_layers * spec.layer_matmul_params
    head_params = spec.d_model * spec.vocab_size
    if cached:
        n_rows, query_key_pairs = 1, n_keys
    else:
        n_rows, query_key_pairs = n_keys, n_keys * (n_keys + 1) // 2
    # scores q.k and the weighted sum of values: 2 x 2 flops per (query, key, channel)
    attn_flops = spec.n_layers * 4 * attn_width * query_key_pairs
    flops = 2 * n_rows * layers_params + 2 * head_params + attn_flops
    cache_read = spec_cache_bytes(spec, n_keys, 1, bytes_per_element) if cached else 0
    return StepCost(flops, spec.matmul_params * bytes_per_element, cache_read)


def total_flops(spec: ModelSpec, prompt_len: int, new_tokens: int, cached: bool) -> int:
    """FLOPs of the decode steps after the prefill (steps 1..new_tokens-1), summed."""
    return sum(step_cost(spec, prompt_len + s, cached).flops for s in range(new_tokens - 1))


# ---------------------------------------------------------------------------------------------
# Measuring


def quick() -> bool:
    """KVLAB_QUICK=1 shrinks benchmark sizes (tests, quick looks)."""
    return os.environ.get("KVLAB_QUICK", "") not in ("", "0")


BENCH_TEXT = ("The key and value cache stores the keys and values of every token a transformer "
              "has already seen, so that each new token only computes its own query, key and "
              "value and attends over the stored ones instead of recomputing the whole "
              "sequence. ")


def bench_prompt_ids(lm, prompt_len: int) -> list[int]:
    """A prompt of exactly `prompt_len` tokens (a fixed English text, repeated as needed)."""
    if not isinstance(prompt_len, int) or prompt_len < 1:
        raise ValueError(f"prompt_len must be a positive integer, got {prompt_len!r}")
    piece = lm.encode(BENCH_TEXT)
    return (piece * (prompt_len // len(piece) + 1))[:prompt_len]


@dataclass
class ModeResult:
    mode: str
    runs_step_s: list[list[float]]  # per repeat, per step (step 0 = prefill + first token)
    new_ids: list[int] = field(default_factory=list)
    cache_bytes: int = 0

    @property
    def step_ms(self) -> list[float]:
        """Median over repeats of each step's time, in ms."""
        return [statistics.median(run[i] for run in self.runs_step_s) * 1e3
                for i in range(len(self.runs_step_s[0]))]

    @property
    def step_ms_min(self) -> list[float]:
        """The fastest repeat of each step, in ms: the least disturbed by other programs."""
        return [min(run[i] for run in self.runs_step_s) * 1e3
                for i in range(len(self.runs_step_s[0]))]

    @property
    def decode_step_ms(self) -> list[float]:
        """All decode steps (after the prefill step) of all repeats, in ms."""
        return [t * 1e3 for run in self.runs_step_s for t in (run[1:] or run)]

    @property
    def per_token_ms_median(self) -> float:
        return statistics.median(self.decode_step_ms)

    @property
    def per_token_ms_iqr(self) -> tuple[float, float]:
        q = statistics.quantiles(self.decode_step_ms, n=4) if len(self.decode_step_ms) > 1 \
            else [self.decode_step_ms[0]] * 3
        return q[0], q[2]

    @property
    def totals_s(self) -> list[float]:
        return [sum(run) for run in self.runs_step_s]

    @property
    def total_s_median(self) -> float:
        return statistics.median(self.totals_s)

    @property
    def prefill_ms_median(self) -> float:
        return statistics.median(run[0] for run in self.runs_step_s) * 1e3

    def summary(self) -> dict:
        low, high = self.per_token_ms_iqr
        return dict(mode=self.mode, per_token_ms_median=self.per_token_ms_median,
                    per_token_ms_q1=low, per_token_ms_q3=high,
                    total_s_median=self.total_s_median,
                    total_s_min=min(self.totals_s), total_s_max=max(self.totals_s),
                    prefill_ms_median=self.prefill_ms_median, step_ms=self.step_ms,
                    step_ms_min=self.step_ms_min,
                    repeats=len(self.runs_step_s), new_ids=self.new_ids,
                    cache_bytes=self.cache_bytes)


def run_mode(lm, mode: str, prompt_ids: list[int], new_tokens: int) -> tuple[list[float],
                                                                             list[int], int]:
    """One timed generation in one mode: (step times in s, new ids, cache bytes)."""
    from .generate import generate, hf_generate

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    run = generate if mode.startswith("kvlab") else hf_generate
    result = run(lm, prompt_ids, new_tokens, cache=mode.endswith("-cache"))
    return result.step_times_s, result.new_ids, result.cache_bytes


def floor_pass_s(lm, repeats: int = 20) -> list[float]:
    """Times of one pass of every weight matrix through a matrix-vector product.

    The matrices are the decoder's own (same layout, same x @ w), so the floor is what a
    decode step costs if it did nothing but read each weight once.
    """
    return _pass_times_s(_weight_matrices(lm), rows=1, repeats=repeats)


def _weight_matrices(lm) -> list[torch.Tensor]:
    """Every matrix a decode step multiplies by, as the decoder holds them."""
    from .decoder import prepare

    w = prepare(lm)
    per_layer = [(layer.w_qkv, layer.wo, layer.w_gate, layer.w_up, layer.w_down)
                 for layer in w.layers]
    return [m for matrices in per_layer for m in matrices if m is not None] + [w.lm_head]


def _pass_times_s(matrices: list[torch.Tensor], rows: int, repeats: int) -> list[float]:
    """Times of `rows` input rows through every matrix once (two warm-up passes first)."""
    device = matrices[0].device
    inputs = {m.shape[0]: torch.randn(rows, m.shape[0], dtype=m.dtype, device=device)
              for m in matrices}
    times = []
    with torch.inference_mode():
        for repeat in range(repeats + 2):
            _synchronize(device)
            start = time.perf_counter_ns()
            for m in matrices:
                inputs[m.shape[0]] @ m
            _synchronize(device)  # a GPU runs asynchronously: wait before reading the clock
            if repeat >= 2:
                times.append((time.perf_counter_ns() - start) / 1e9)
    return times


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Rates:
    """What this machine sustains: bytes/s streaming weights (1 row), FLOP/s with many rows."""

    bytes_per_s: float
    flops_per_s: float


def measure_rates(lm, rows: int = 64, repeats: int = 3) -> Rates:
    """Measure the two rates the cost model turns into time (about a second on a laptop).

    bytes/s: one input row through every weight matrix (the floor pass); FLOP/s: `rows`
    rows through the same matrices, enough rows to keep the arithmetic units busy.
    """
    matrices = _weight_matrices(lm)
    n_weights = sum(m.numel() for m in matrices)
    one_row_s = statistics.median(_pass_times_s(matrices, rows=1, repeats=repeats + 2))
    many_rows_s = statistics.median(_pass_times_s(matrices, rows=rows, repeats=repeats))
    bytes_moved = n_weights * matrices[0].element_size()
    return Rates(bytes_per_s=bytes_moved / one_row_s,
                 flops_per_s=2 * rows * n_weights / many_rows_s)


def machine_info() -> dict:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = dict(date=datetime.now().strftime("%Y-%m-%d %H:%M"),
                threads=torch.get_num_threads(), torch=torch.__version__,
                transformers=transformers.__version__, cpu=cpu, platform=platform.platform(),
                python=platform.python_version())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclass
class BenchReport:
    model: str
    dtype: str
    prompt_len: int
    new_tokens: int
    repeats: int
    machine: dict  # machine_info() plus the device the run used
    results: list[dict]  # one summary per mode, plus the floor
    stopped_early: bool = False
    spec: ModelSpec | None = None  # the model's shapes, so a saved run can be re-modelled

    def to_json(self) -> dict:
        data = dict(model=self.model, dtype=self.dtype, prompt_len=self.prompt_len,
                    new_tokens=self.new_tokens, repeats=self.repeats, **self.machine,
                    results=self.results, stopped_early=self.stopped_early)
        if self.spec is not None:
            data["spec"] = asdict(self.spec)
        return data

    @property
    def modes(self) -> list[str]:
        return [entry["mode"] for entry in self.results]

    def has(self, mode: str) -> bool:
        return mode in self.modes

    def result(self, mode: str) -> dict:
        for entry in self.results:
            if entry["mode"] == mode:
                return entry
        raise KeyError(f"no result for mode {mode!r}; have "
                       f"{', '.join(e['mode'] for e in self.results)}")

    def save_json(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)


def _check_device(device) -> torch.device | None:
    """None (stay where the model is) or a usable torch device; a clear error otherwise."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or None, got {device!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here; "
                         f"use device='cpu' (or leave it out)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {str(device)!r}")
    return device


def model_device(lm) -> torch.device:
    return next(lm.model.parameters()).device


def benchmark(lm, prompt_len: int = 32, new_tokens: int = 128, repeats: int = 3,
              modes=MODES, floor: bool = True, warmup_tokens: int = 4,
              stop: Callable[[], bool] | None = None, progress: bool | Callable = True,
              device: str | None = None) -> BenchReport:
    """Time each mode `repeats` times after a warm-up; keep every step's time.

    `stop()` is asked between runs: when it says True, what finished so far is returned.
    `progress`: True/False for a tqdm bar, or a callable making the bar (tqdm's signature).
    `device`: run on this device ("cuda" for the GPU column), then move the model back.
    """
    modes = [modes] if isinstance(modes, str) else list(modes)
    if not modes:
        raise ValueError(f"name at least one mode to time: {', '.join(MODES)}")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    target = _check_device(device)
    home = model_device(lm)
    if target is None or target == home:
        return _benchmark_here(lm, prompt_len, new_tokens, repeats, modes, floor,
                               warmup_tokens, stop, progress)
    lm.to(target)
    try:
        return _benchmark_here(lm, prompt_len, new_tokens, repeats, modes, floor,
                               warmup_tokens, stop, progress)
    finally:
        lm.to(home)


def _progress_bar(progress: bool | Callable, total: int):
    from tqdm.auto import tqdm

    if callable(progress):
        return progress(total=total, desc="benchmark")
    return tqdm(total=total, desc="benchmark", disable=not progress)


def _benchmark_here(lm, prompt_len, new_tokens, repeats, modes, floor, warmup_tokens, stop,
                    progress) -> BenchReport:
    from .generate import check_length

    prompt_ids = bench_prompt_ids(lm, prompt_len)
    check_length(lm, prompt_len, new_tokens)
    results, stopped = [], False
    bar = _progress_bar(progress, len(modes) * (repeats + 1) + (1 if floor else 0))
    for mode in modes:
        bar.set_postfix_str(mode)
        run_mode(lm, mode, prompt_ids, min(warmup_tokens, new_tokens))  # warm-up, not timed
        bar.update(1)
        measured = ModeResult(mode, [])
        for _ in range(repeats):
            if stop is not None and stop():
                stopped = True
                break
            steps, measured.new_ids, measured.cache_bytes = run_mode(lm, mode, prompt_ids,
                                                                     new_tokens)
            measured.runs_step_s.append(steps)
            bar.update(1)
        if measured.runs_step_s:
            results.append(measured.summary())
        if stopped:
            break
    if floor and not stopped:
        bar.set_postfix_str(FLOOR)
        results.append(_floor_entry(lm, new_tokens))
        bar.update(1)
    bar.close()
    machine = dict(machine_info(), device=str(model_device(lm)))
    return BenchReport(lm.name, str(lm.dtype).replace("torch.", ""), prompt_len, new_tokens,
                       repeats, machine, results, stopped, spec_of(lm))


def _floor_entry(lm, new_tokens: int) -> dict:
    """The floor as a result entry, with the rates the cost model needs."""
    times = floor_pass_s(lm)
    ms = statistics.median(times) * 1e3
    q1, _, q3 = statistics.quantiles(times, n=4)
    rates = measure_rates(lm)
    return dict(mode=FLOOR, per_token_ms_median=ms, per_token_ms_q1=q1 * 1e3,
                per_token_ms_q3=q3 * 1e3, total_s_median=ms * new_tokens / 1e3,
                step_ms=[ms] * new_tokens, weight_bytes=spec_of(lm).matmul_params * 4,
                bytes_per_s=rates.bytes_per_s, flops_per_s=rates.flops_per_s)


def report_table(report: BenchReport) -> str:
    """A plain-text table of a report, one row per mode."""
    lines = [f"{report.model}  prompt {report.prompt_len} + {report.new_tokens} new tokens, "
             f"{report.repeats} repeats, {report.machine['threads']} threads, "
             f"torch {report.machine['torch']}, transformers {report.machine['transformers']}",
             f"{'mode':<15}{'ms/token (median)':>19}{'IQR':>17}{'prefill ms':>12}"
             f"{'total s':>10}"]
    for r in report.results:
        prefill = f"{r['prefill_ms_median']:.1f}" if "prefill_ms_median" in r else "-"
        lines.append(f"{r['mode']:<15}{r['per_token_ms_median']:>19.2f}"
                     f"{r['per_token_ms_q1']:>8.2f}-{r['per_token_ms_q3']:<8.2f}"
                     f"{prefill:>12}{r['total_s_median']:>10.2f}")
    return "\n".join(lines)


def report_summary(report: BenchReport) -> str:
    """The table, then the ratios that matter: ours vs transformers, uncached / cached, floor."""
    modes = {r["mode"]: r for r in report.results}
    ours = modes.get("kvlab-cache")
    notes = []
    if ours and "hf-cache" in modes:
        ratio = ours["per_token_ms_median"] / modes["hf-cache"]["per_token_ms_median"]
        same = ours["new_ids"] == modes["hf-cache"]["new_ids"]
        notes.append(f"kvlab-cache / hf-cache per token: {ratio:.2f}x; tokens identical: {same}")
    if ours and "kvlab-nocache" in modes:
        notes.append(f"kvlab-nocache / kvlab-cache total time: {total_speedup(report):.1f}x")
    if ours and FLOOR in modes:
        notes.append(f"kvlab-cache per token = {floor_ratio(report):.2f}x the floor "
                     f"(one pass over all weights)")
    if report.stopped_early:
        notes.append("stopped early: the table holds the runs that finished")
    return "\n".join([report_table(report), *notes])


# ---------------------------------------------------------------------------------------------
# Reading a report: lengths, the floor, speedups (notebook 03)


def lesson_sizes() -> dict:
    """The benchmark sizes of notebook 03: the real lesson, or tiny ones when KVLAB_QUICK=1."""
    if quick():
        return dict(prompt_len=16, new_tokens=24, repeats=2)
    return dict(prompt_len=32, new_tokens=256, repeats=3)


def context_lengths(prompt_len: int, n_steps: int) -> list[int]:
    """Tokens each step attends over: the prompt at step 0 (prefill), one more every step."""
    return [prompt_len + step for step in range(n_steps)]


def floor_ratio(report: BenchReport, mode: str = "kvlab-cache") -> float:
    """A mode's per-token median as a multiple of the floor (one pass over all weights)."""
    return report.result(mode)["per_token_ms_median"] / report.result(FLOOR)["per_token_ms_median"]


def total_speedup(report: BenchReport, cached: str = "kvlab-cache",
                  uncached: str = "kvlab-nocache") -> float:
    """Total time uncached / cached (medians over repeats)."""
    return report.result(uncached)["total_s_median"] / report.result(cached)["total_s_median"]


def cumulative_s(step_ms: list[float]) -> list[float]:
    """Total seconds after each step (the prefill step included)."""
    totals, running = [], 0.0
    for ms in step_ms:
        running += ms / 1e3
        totals.append(running)
    return totals


def speedups(report: BenchReport, cached: str = "kvlab-cache",
             uncached: str = "kvlab-nocache") -> tuple[list[int], list[float], list[float]]:
    """(context lengths, per-step speedup, speedup of the total so far), uncached / cached."""
    fast, slow = report.result(cached)["step_ms"], report.result(uncached)["step_ms"]
    per_step = [s / f for s, f in zip(slow, fast, strict=True)]
    totals = [s / f for s, f in zip(cumulative_s(slow), cumulative_s(fast), strict=True)]
    return context_lengths(report.prompt_len, len(fast)), per_step, totals


# ---------------------------------------------------------------------------------------------
# Slopes on a log-log plot: total time ~ c * n^slope


@dataclass(frozen=True)
class PowerFit:
    """y = coefficient * x ** slope, fitted over x_min..x_max."""

    slope: float
    coefficient: float
    x_min: float
    x_max: float

    def __call__(self, x: float) -> float:
        return self.coefficient * x ** self.slope


def fit_power_law(x: list[float], y: list[float]) -> PowerFit:
    """Least-squares straight line through (log x, log y): its slope is the power."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need at least 2 matching (x, y) points, got {len(x)} x and "
                         f"{len(y)} y values")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("a power law is fitted on logarithms: every x and y must be > 0")
    if min(x) == max(x):
        raise ValueError(f"all x values are {x[0]}: a slope needs at least two different x")
    log_x = [math.log(v) for v in x]
    log_y = [math.log(v) for v in y]
    mean_x, mean_y = statistics.fmean(log_x), statistics.fmean(log_y)
    slope = (sum((a - mean_x) * (b - mean_y) for a, b in zip(log_x, log_y, strict=True))
             / sum((a - mean_x) ** 2 for a in log_x))
    return PowerFit(slope, math.exp(mean_y - slope * mean_x), min(x), max(x))


def decode_totals(step_ms: list[float]) -> tuple[list[int], list[float]]:
    """(n, seconds of the first n decode steps) for n = 1.. : the time after the prefill."""
    decode = cumulative_s(step_ms[1:])
    return list(range(1, len(decode) + 1)), decode


def fit_decode_slope(step_ms: list[float], tail: float = 0.5) -> PowerFit:
    """Slope of total decode time against tokens, over the last `tail` of the run.

    The uncached total is c(nP + n^2/2) for a prompt of P tokens: its local slope climbs
    from 1 towards 2 as n outgrows P, so the fit looks at the long end of the run.
    """
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be a fraction in (0, 1], got {tail!r}")
    n, seconds = decode_totals(step_ms)
    if len(n) < 3:
        raise ValueError(f"a slope needs at least 3 decode steps after the prefill, got "
                         f"{len(n)}; ask for more new tokens")
    first = min(int(len(n) * (1 - tail)), len(n) - 3)
    return fit_power_law(n[first:], seconds[first:])


def slope_fits(report: BenchReport) -> dict[str, PowerFit]:
    """The fitted slope of every timed mode (the floor excluded), over the fastest repeat of
    each step, so that a step slowed by another program bends the fit as little as possible."""
    return {entry["mode"]: fit_decode_slope(entry.get("step_ms_min") or entry["step_ms"])
            for entry in report.results if entry["mode"] != FLOOR}


def slope_lines(report: BenchReport) -> list[str]:
    """One line per mode: the fitted slope, and the cost model's slope over the same range."""
    lines = []
    for mode, fit in slope_fits(report).items():
        line = (f"{mode:<14} total decode time ~ n^{fit.slope:.2f} "
                f"(fitted over n = {fit.x_min:.0f}..{fit.x_max:.0f} new tokens)")
        if report.spec is not None and report.has(FLOOR):
            model_fit = fit_decode_slope(predicted_ms(report, mode))
            line += f"; cost model: n^{model_fit.slope:.2f}"
        lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------
# The cost model's prediction, in milliseconds, beside the measurement


def step_seconds(cost: StepCost, rates: Rates) -> float:
    """Roofline: a step takes as long as its bytes at bytes/s or its FLOPs at FLOP/s, the larger."""
    return max(cost.bytes_moved / rates.bytes_per_s, cost.flops / rates.flops_per_s)


def step_costs(spec: ModelSpec, prompt_len: int, new_tokens: int,
               cached: bool) -> list[StepCost]:
    """Cost of every step of one generation; step 0 is the prefill of the whole prompt."""
    prefill = step_cost(spec, prompt_len - 1, cached=False)  # all prompt rows, causal attention
    later = [step_cost(spec, prompt_len + step - 1, cached) for step in range(1, new_tokens)]
    return [prefill, *later]


def predict_step_ms(spec: ModelSpec, prompt_len: int, new_tokens: int, cached: bool,
                    rates: Rates) -> list[float]:
    """The cost model's time for every step, with this machine's measured rates."""
    return [step_seconds(cost, rates) * 1e3
            for cost in step_costs(spec, prompt_len, new_tokens, cached)]


def report_rates(report: BenchReport) -> Rates:
    """The rates measured with the report's floor."""
    if not report.has(FLOOR) or "bytes_per_s" not in report.result(FLOOR):
        raise ValueError("this report has no measured rates: run the benchmark with floor=True "
                         "(a run stopped early skips the floor)")
    entry = report.result(FLOOR)
    return Rates(entry["bytes_per_s"], entry["flops_per_s"])


def predicted_ms(report: BenchReport, mode: str) -> list[float]:
    """The cost model's step times for one mode of a report (same lengths, same rates)."""
    if report.spec is None:
        raise ValueError("this report has no model shapes (spec); it was saved by an older "
                         "kvlab: rerun the benchmark to compare it with the cost model")
    return predict_step_ms(report.spec, report.prompt_len, report.new_tokens,
                           cached=mode.endswith("-cache"), rates=report_rates(report))


def gap_sentences(report: BenchReport, mode_cached: str = "kvlab-cache",
                  mode_uncached: str = "kvlab-nocache") -> list[str]:
    """Where the measurement and the cost model disagree by more than 30 %, and why."""
    sentences = noise_sentences(report)
    if report.has(mode_cached):
        measured, model = report.result(mode_cached)["step_ms"], predicted_ms(report, mode_cached)
        ratio = statistics.median(measured[1:] or measured) / statistics.median(model[1:] or model)
        sentences.append(_cached_gap(ratio))
        prefill_ratio = measured[0] / model[0]
        if not 0.7 < prefill_ratio < 1.3:
            sentences.append(
                f"Prefill (step 0): measured {prefill_ratio:.1f}x the cost model. The FLOP "
                f"rate was measured with 64 rows; {report.prompt_len} prompt rows run at their own "
                f"rate, and the softmax and masking over the prompt are not counted.")
    if report.has(mode_uncached) and report.new_tokens >= 4:
        measured = report.result(mode_uncached)["step_ms"]
        model = predicted_ms(report, mode_uncached)
        late = slice(len(measured) * 3 // 4, None)
        ratio = statistics.median(measured[late]) / statistics.median(model[late])
        if ratio > 1.3:
            sentences.append(
                f"Uncached, late steps: measured {ratio:.1f}x the cost model. Recomputing the "
                f"sequence also reruns every norm, position lookup and attention softmax and "
                f"moves activations that grow with the sequence; the model counts only the "
                f"matrix products.")
        elif ratio < 0.7:
            sentences.append(
                f"Uncached, late steps: measured {ratio:.1f}x the cost model, faster: with "
                f"hundreds of rows the matrix products reach a higher FLOP rate than the "
                f"64-row probe measured.")
        else:
            sentences.append(f"Uncached, late steps: measured {ratio:.2f}x the cost model: "
                             f"recomputing is compute-bound, as the FLOP count says.")
    return sentences


def noise_sentences(report: BenchReport) -> list[str]:
    """Warnings that a run was disturbed: repeats that disagree, cached steps that vary, a
    cached total that does not grow linearly."""
    noisy = [f"{e['mode']} ({e['total_s_min']:.2f}-{e['total_s_max']:.2f} s)"
             for e in report.results
             if "total_s_min" in e and e["total_s_max"] > 1.3 * e["total_s_min"]]
    for entry in report.results:
        if entry["mode"].endswith("-cache") and entry["per_token_ms_q3"] > \
                1.5 * entry["per_token_ms_q1"]:
            noisy.append(f"{entry['mode']} steps ({entry['per_token_ms_q1']:.1f}-"
                         f"{entry['per_token_ms_q3']:.1f} ms between quartiles)")
    bent = [f"{mode} ~ n^{fit.slope:.2f}" for mode, fit in slope_fits(report).items()
            if mode.endswith("-cache") and report.new_tokens >= 8 and fit.slope > 1.5]
    sentences = []
    if noisy:
        sentences.append("Careful: this run was disturbed, probably by other programs using "
                         "the CPU; repeats or steps disagree widely: " + "; ".join(noisy) +
                         ". Rerun on a quiet machine before trusting the ratios below.")
    if bent:
        sentences.append("Careful: a cached total should grow about linearly (n^1), but the "
                         "fit gives " + ", ".join(bent) + ": some late steps were slowed by "
                         "something other than the model. Rerun before drawing conclusions.")
    return sentences


def _cached_gap(ratio: float) -> str:
    if ratio > 1.3:
        return (f"Cached decode: measured {ratio:.1f}x the cost model. Besides reading the "
                f"weights, each step runs dozens of small operations (norms, softmax, the cache "
                f"copy, Python between them) that the model does not count; in a small model they "
                f"are a visible share of the step.")
    if ratio < 0.7:
        return (f"Cached decode: measured {ratio:.1f}x the cost model, faster than reading every "
                f"weight from memory: part of the weights stays in the CPU's caches between "
                f"steps.")
    return (f"Cached decode: measured {ratio:.2f}x the cost model: a cached step costs about what "
            f"reading every weight once costs (memory-bound).")


def cost_table(spec: ModelSpec, positions: list[int], bytes_per_element: int = 4) -> str:
    """FLOPs, bytes and FLOPs per byte of one decode step at a few positions, both modes."""
    lines = [f"{spec.name}: one decode step, batch 1, {bytes_per_element}-byte numbers",
             f"{'position':>9}{'cached MFLOP':>14}{'cached MB':>11}{'FLOP/byte':>11}"
             f"{'uncached MFLOP':>16}{'FLOP/byte':>11}"]
    for position in positions:
        cached = step_cost(spec, position, True, bytes_per_element)
        uncached = step_cost(spec, position, False, bytes_per_element)
        lines.append(f"{position:>9}{cached.flops / 1e6:>14,.0f}{cached.bytes_moved / 1e6:>11.1f}"
                     f"{cached.flops_per_byte:>11.2f}{uncached.flops / 1e6:>16,.0f}"
                     f"{uncached.flops_per_byte:>11.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Before a long run: an estimate from the cost model and the measured rates

LONG_RUN_S = 60.0  # runs estimated longer than this ask first
HF_OVERHEAD = 1.3  # a guess at generate()'s own bookkeeping on top of the model's work


def estimate_run_s(spec: ModelSpec, prompt_len: int, new_tokens: int, repeats: int,
                   modes, rates: Rates, warmup_tokens: int = 4) -> float:
    """Seconds a benchmark would take: each mode's warm-up and repeats, from the cost model."""
    seconds = 0.0
    for mode in modes:
        cached = mode.endswith("-cache")
        run = sum(predict_step_ms(spec, prompt_len, new_tokens, cached, rates)) / 1e3
        warmup = sum(predict_step_ms(spec, prompt_len, min(warmup_tokens, new_tokens), cached,
                                     rates)) / 1e3
        seconds += (repeats * run + warmup) * (HF_OVERHEAD if mode.startswith("hf") else 1.0)
    return seconds


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '1 h 05 min'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def gpu_report(lm, prompt_len: int, new_tokens: int, repeats: int,
               modes=("kvlab-cache", "kvlab-nocache"), **options) -> BenchReport | None:
    """The optional GPU column: the same benchmark on CUDA, or None without a CUDA GPU."""
    if not torch.cuda.is_available():
        return None
    return benchmark(lm, prompt_len, new_tokens, repeats, modes=modes, device="cuda",
                     **options)
