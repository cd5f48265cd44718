"""A hand-made benchmark report (no timing), for tests of the analysis, plots and files."""

from kvlab import bench


def fake_report(prompt_len: int = 8, new_tokens: int = 20, stopped_early: bool = False):
    """Cached steps take 10 ms, uncached steps 1 ms per token attended over; prefill 30 ms."""
    def entry(mode, step_ms, cache_bytes):
        return dict(mode=mode, per_token_ms_median=sorted(step_ms[1:])[len(step_ms[1:]) // 2],
                    per_token_ms_q1=min(step_ms[1:]), per_token_ms_q3=max(step_ms[1:]),
                    total_s_median=sum(step_ms) / 1e3, total_s_min=sum(step_ms) / 1e3,
                    total_s_max=sum(step_ms) / 1e3, prefill_ms_median=step_ms[0],
                    step_ms=step_ms, repeats=2, new_ids=list(range(new_tokens)),
                    cache_bytes=cache_bytes)

    spec = bench.PRESETS["DistilGPT-2"]
    lengths = bench.context_lengths(prompt_len, new_tokens)
    cache_bytes = bench.spec_cache_bytes(spec, prompt_len + new_tokens - 1)
    cached = [30.0] + [10.0] * (new_tokens - 1)
    uncached = [30.0] + [1.0 * n for n in lengths[1:]]
    results = [entry("kvlab-cache", cached, cache_bytes),
               entry("kvlab-nocache", uncached, 0),
               entry("hf-cache", [c * 1.5 for c in cached], cache_bytes),
               entry("hf-nocache", [u * 1.2 for u in uncached], 0),
               dict(mode="floor", per_token_ms_median=8.0, per_token_ms_q1=7.5,
                    per_token_ms_q3=8.5, total_s_median=8.0 * new_tokens / 1e3,
                    step_ms=[8.0] * new_tokens, weight_bytes=spec.matmul_params * 4,
                    bytes_per_s=4e10, flops_per_s=2e11)]
    machine = dict(threads=4, torch="2.13.0", transformers="5.0.0", cpu="Test CPU 9000",
                   platform="Linux", python="3.11.7", device="cpu")
    return bench.BenchReport("random:distilgpt2", "float32", prompt_len, new_tokens, 2, machine,
                             results, stopped_early, spec)
