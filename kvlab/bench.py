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
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
            if not isinstance(value, int) or value < 1:
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
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if not isinstance(n_tokens, int) or n_tokens < 0:
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
    from .decoder import prepare

    w = prepare(lm)
    matrices = [m for layer in w.layers for m in (layer.w_qkv, layer.wo,
                                                  layer.w_gate, layer.w_up, layer.w_down)
                if m is not None] + [w.lm_head]
    inputs = {m.shape[0]: torch.randn(1, m.shape[0], dtype=m.dtype) for m in matrices}
    times = []
    with torch.inference_mode():
        for repeat in range(repeats + 2):
            start = time.perf_counter_ns()
            for m in matrices:
                inputs[m.shape[0]] @ m
            if repeat >= 2:  # two warm-up passes
                times.append((time.perf_counter_ns() - start) / 1e9)
    return times


def machine_info() -> dict:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = dict(threads=torch.get_num_threads(), torch=torch.__version__,
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
    machine: dict
    results: list[dict]  # one summary per mode, plus the floor
    stopped_early: bool = False

    def to_json(self) -> dict:
        data = dict(model=self.model, dtype=self.dtype, prompt_len=self.prompt_len,
                    new_tokens=self.new_tokens, repeats=self.repeats, **self.machine,
                    results=self.results, stopped_early=self.stopped_early)
        return data

    def result(self, mode: str) -> dict:
        for entry in self.results:
            if entry["mode"] == mode:
                return entry
        raise KeyError(f"no result for mode {mode!r}; have "
                       f"{', '.join(e['mode'] for e in self.results)}")

    def save_json(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)


def benchmark(lm, prompt_len: int = 32, new_tokens: int = 128, repeats: int = 3,
              modes=MODES, floor: bool = True, warmup_tokens: int = 4,
              stop: Callable[[], bool] | None = None, progress: bool = True) -> BenchReport:
    """Time each mode `repeats` times after a warm-up; keep every step's time.

    `stop()` is asked between runs: when it says True, what finished so far is returned.
    """
    from tqdm.auto import tqdm

    from .generate import check_length

    modes = list(modes)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    prompt_ids = bench_prompt_ids(lm, prompt_len)
    check_length(lm, prompt_len, new_tokens)

    results, stopped = [], False
    bar = tqdm(total=len(modes) * (repeats + 1), desc="benchmark", disable=not progress)
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
    bar.close()
    if floor and not stopped:
        times = floor_pass_s(lm)
        ms = statistics.median(times) * 1e3
        results.append(dict(mode=FLOOR, per_token_ms_median=ms,
                            per_token_ms_q1=statistics.quantiles(times, n=4)[0] * 1e3,
                            per_token_ms_q3=statistics.quantiles(times, n=4)[2] * 1e3,
                            total_s_median=ms * new_tokens / 1e3, step_ms=[ms] * new_tokens,
                            weight_bytes=spec_of(lm).matmul_params * 4))
    return BenchReport(lm.name, str(lm.dtype).replace("torch.", ""), prompt_len, new_tokens,
                       repeats, machine_info(), results, stopped)


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
