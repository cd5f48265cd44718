"""Cost model against hand-computed values; the timing harness's bookkeeping (no timings
are asserted)."""

import json

import pytest

from kvlab import bench


def test_cache_bytes_by_hand():
    # DistilGPT-2: 2 x 6 layers x 12 heads x 64 x 1024 tokens x 4 bytes = 37,748,736
    assert bench.kv_cache_bytes(6, 12, 64, 1024) == 37_748_736
    # SmolLM2-135M: 2 x 30 x 3 x 64 x 8192 x 4 = 377,487,360 (with 9 KV heads, 3x that)
    assert bench.spec_cache_bytes(bench.PRESETS["SmolLM2-135M"], 8192) == 377_487_360
    # Llama-3-8B, 8 KV heads, fp16, 8192 tokens: 2*32*8*128*8192*2 = 1 GiB
    assert bench.spec_cache_bytes(bench.PRESETS["Llama-3-8B"], 8192,
                                  bytes_per_element=2) == 2**30


def test_parameter_counts_by_hand():
    distil = bench.PRESETS["DistilGPT-2"]
    # per layer 4*768^2 (QKVO) + 2*768*3072 (MLP) = 7,077,888; head 768*50257 = 38,597,376
    assert distil.layer_matmul_params == 7_077_888
    assert distil.matmul_params == 6 * 7_077_888 + 38_597_376
    smol = bench.PRESETS["SmolLM2-135M"]
    # per layer 576*64*(2*9 + 2*3) + 3*576*1536 = 884,736 + 2,654,208
    assert smol.layer_matmul_params == 3_538_944
    assert 130e6 < smol.n_params < 136e6  # ~135M, as its name says


def test_spec_of_loaded_models_matches_presets(distil, smollm2):
    assert bench.spec_of(distil).matmul_params == bench.PRESETS["DistilGPT-2"].matmul_params
    assert bench.spec_of(smollm2).matmul_params == bench.PRESETS["SmolLM2-135M"].matmul_params


def test_step_cost_by_hand():
    spec = bench.PRESETS["DistilGPT-2"]
    cached = bench.step_cost(spec, position=99, cached=True)  # 100 keys
    attn = 6 * 4 * 768 * 100
    assert cached.flops == 2 * spec.matmul_params + attn
    assert cached.weight_bytes == spec.matmul_params * 4
    assert cached.cache_bytes == 2 * 6 * 12 * 64 * 100 * 4
    uncached = bench.step_cost(spec, position=99, cached=False)
    assert uncached.flops == (2 * 100 * 6 * spec.layer_matmul_params + 2 * 768 * 50257
                              + 6 * 4 * 768 * (100 * 101 // 2))
    assert uncached.cache_bytes == 0
    assert cached.flops_per_byte < 1  # batch-1 decode is memory-bound


def test_spec_validation():
    with pytest.raises(ValueError, match="n_heads \\(9\\) must be a multiple of n_kv_heads"):
        bench.ModelSpec("x", 1, 9, 2, 64, 576, 1536, 100, True)
    with pytest.raises(ValueError, match="n_layers must be a positive integer, got 0"):
        bench.ModelSpec("x", 0, 1, 1, 1, 1, 1, 1, False)
    with pytest.raises(ValueError, match="n_tokens must be an integer >= 0"):
        bench.kv_cache_bytes(1, 1, 1, -5)


def test_mode_result_statistics():
    result = bench.ModeResult("kvlab-cache", [[0.5, 0.010, 0.020, 0.030], [0.7, 0.012, 0.018,
                                                                           0.040]])
    assert result.prefill_ms_median == pytest.approx(600)
    assert result.per_token_ms_median == pytest.approx(19)  # median of the 6 decode steps
    assert result.step_ms == pytest.approx([600, 11, 19, 35])
    assert result.total_s_median == pytest.approx((0.56 + 0.77) / 2)


def test_bench_prompt_has_exact_length(tiny_gpt2):
    assert len(bench.bench_prompt_ids(tiny_gpt2, 77)) == 77


def test_benchmark_report_shape_and_json(tiny_gpt2, tmp_path):
    report = bench.benchmark(tiny_gpt2, prompt_len=8, new_tokens=6, repeats=2, progress=False)
    modes = [r["mode"] for r in report.results]
    assert modes == [*bench.MODES, "floor"]
    for entry in report.results:
        assert len(entry["step_ms"]) == 6
        assert entry["per_token_ms_median"] > 0
    ids = {r["mode"]: r["new_ids"] for r in report.results if "new_ids" in r}
    assert ids["kvlab-cache"] == ids["kvlab-nocache"] == ids["hf-cache"] == ids["hf-nocache"]
    path = tmp_path / "out.json"
    report.save_json(path)
    data = json.loads(path.read_text())
    for key in ("model", "threads", "torch", "transformers", "prompt_len", "new_tokens",
                "results"):
        assert key in data
    assert {"per_token_ms_median", "total_s_median", "step_ms"} <= set(data["results"][0])


def test_benchmark_stop_keeps_what_finished(tiny_gpt2):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3  # lets kvlab-cache's 2 repeats and 1 of kvlab-nocache run

    report = bench.benchmark(tiny_gpt2, 8, 4, repeats=2, stop=stop, progress=False)
    assert report.stopped_early
    assert [r["mode"] for r in report.results] == ["kvlab-cache", "kvlab-nocache"]
    assert report.results[1]["repeats"] == 1


def test_benchmark_rejects_bad_input(tiny_gpt2):
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        bench.benchmark(tiny_gpt2, 8, 4, modes=["fast"], progress=False)
    with pytest.raises(ValueError, match="exceeds random:tiny-gpt2's context limit of 256"):
        bench.benchmark(tiny_gpt2, 200, 100, progress=False)
