"""Notebook 03's analysis: slope fits on synthetic data with known slopes, the cost model's
step times against hand-computed values, speedups, the floor ratio, the run estimate, devices."""

import pytest
import torch
from bench_fakes import fake_report

from kvlab import bench

DISTIL = bench.PRESETS["DistilGPT-2"]
SMOL = bench.PRESETS["SmolLM2-135M"]


# --- fits -------------------------------------------------------------------------------------

@pytest.mark.parametrize("slope, coefficient", [(1.0, 0.02), (2.0, 3.0), (1.5, 0.5)])
def test_fit_power_law_recovers_known_slopes(slope, coefficient):
    x = [2.0, 5.0, 10.0, 40.0, 100.0]
    fit = bench.fit_power_law(x, [coefficient * v ** slope for v in x])
    assert fit.slope == pytest.approx(slope)
    assert fit.coefficient == pytest.approx(coefficient)
    assert fit(7.0) == pytest.approx(coefficient * 7.0 ** slope)


def test_decode_slope_of_constant_steps_is_one():
    fit = bench.fit_decode_slope([500.0] + [12.0] * 300)  # the prefill step is left out
    assert fit.slope == pytest.approx(1.0)
    assert (fit.x_min, fit.x_max) == (151, 300)  # the last half of the 300 decode steps


def test_decode_slope_of_exact_power_law():
    # step s costs s^1.5 - (s-1)^1.5, so the total after n decode steps is exactly n^1.5
    steps = [99.0] + [s ** 1.5 - (s - 1) ** 1.5 for s in range(1, 201)]
    assert bench.fit_decode_slope(steps).slope == pytest.approx(1.5)


def test_uncached_slope_tends_to_two_only_when_n_outgrows_the_prompt():
    def uncached(prompt_len, n):  # step s attends over prompt_len + s tokens
        return [1.0] + [float(prompt_len + s) for s in range(1, n)]

    assert bench.fit_decode_slope(uncached(0, 2000)).slope == pytest.approx(2.0, abs=0.01)
    short = bench.fit_decode_slope(uncached(512, 64)).slope
    assert 1.0 < short < 1.1  # a long prompt and few tokens: still nearly linear


def test_fit_errors_name_the_problem():
    with pytest.raises(ValueError, match="every x and y must be > 0"):
        bench.fit_power_law([1, 2], [0, 1])
    with pytest.raises(ValueError, match="need at least 2 matching"):
        bench.fit_power_law([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="all x values are 3"):
        bench.fit_power_law([3, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 3 decode steps"):
        bench.fit_decode_slope([5.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="tail must be a fraction"):
        bench.fit_decode_slope([1.0] * 10, tail=0)


# --- the cost model as the notebook uses it -------------------------------------------------------

def test_prefill_step_cost_by_hand():
    # DistilGPT-2, 32-token prompt: 32 rows through 6 x 7,077,888 layer weights (2 flops per
    # multiply-add), the LM head once, causal attention over 32*33/2 query-key pairs
    prefill = bench.step_costs(DISTIL, prompt_len=32, new_tokens=1, cached=True)[0]
    assert prefill.flops == 2 * 32 * 6 * 7_077_888 + 2 * 768 * 50257 + 6 * 4 * 768 * 528
    assert prefill.flops == 2_804_835_840
    assert prefill.cache_bytes == 0


def test_step_costs_follow_the_decode_loop():
    # step s >= 1 attends over prompt_len + s keys: position prompt_len + s - 1
    costs = bench.step_costs(DISTIL, prompt_len=32, new_tokens=5, cached=True)
    assert len(costs) == 5
    assert costs[1] == bench.step_cost(DISTIL, 32, cached=True)
    assert costs[4].cache_bytes == 2 * 6 * 12 * 64 * 36 * 4


def test_smollm2_cached_step_bytes_by_hand():
    # weights: 30 x 3,538,944 + 576 x 49,152 = 134,479,872 numbers x 4 bytes;
    # cache at position 287 (288 keys): 2 x 30 layers x 3 KV heads x 64 x 288 x 4 bytes
    cost = bench.step_cost(SMOL, 287, cached=True)
    assert cost.weight_bytes == 537_919_488
    assert cost.cache_bytes == 13_271_040
    assert cost.bytes_moved == 551_190_528


def test_predicted_step_time_is_the_roofline():
    rates = bench.Rates(bytes_per_s=1e10, flops_per_s=5e10)  # balance: 5 FLOP per byte
    cached, uncached = (bench.predict_step_ms(DISTIL, 32, 3, flag, rates) for flag in (True,
                                                                                        False))
    step = bench.step_cost(DISTIL, 32, cached=True)  # memory-bound: bytes decide
    assert cached[1] == pytest.approx(step.bytes_moved / 1e10 * 1e3)
    step = bench.step_cost(DISTIL, 32, cached=False)  # 33 rows, 8.6 FLOP/byte: FLOPs decide
    assert uncached[1] == pytest.approx(step.flops / 5e10 * 1e3)
    assert cached[0] == uncached[0]  # both loops start with the same prefill


def test_estimate_adds_warmup_and_repeats():
    rates = bench.Rates(1e10, 1e11)
    one_run = sum(bench.predict_step_ms(DISTIL, 8, 16, True, rates)) / 1e3
    warmup = sum(bench.predict_step_ms(DISTIL, 8, 4, True, rates)) / 1e3
    seconds = bench.estimate_run_s(DISTIL, 8, 16, 3, ["kvlab-cache"], rates)
    assert seconds == pytest.approx(3 * one_run + warmup)
    hf = bench.estimate_run_s(DISTIL, 8, 16, 3, ["hf-cache"], rates)
    assert hf == pytest.approx(seconds * bench.HF_OVERHEAD)


def test_format_duration():
    assert bench.format_duration(42.4) == "42 s"
    assert bench.format_duration(200) == "3 min 20 s"
    assert bench.format_duration(3900) == "1 h 05 min"


def test_cost_table_for_distilgpt2():
    table = bench.cost_table(DISTIL, [0, 1023]).splitlines()
    assert table[0] == "DistilGPT-2: one decode step, batch 1, 4-byte numbers"
    assert table[2].split()[:3] == ["0", "162", "324.3"]  # 162 MFLOP, 324.3 MB: 0.5 FLOP/byte


# --- reading a report ---------------------------------------------------------------------------

def test_floor_ratio_speedups_and_slopes_of_a_known_report():
    report = fake_report(prompt_len=8, new_tokens=20)
    assert bench.floor_ratio(report) == pytest.approx(10 / 8)
    lengths, per_step, totals = bench.speedups(report)
    assert lengths[:3] == [8, 9, 10]
    assert per_step[0] == pytest.approx(1.0)  # the same prefill
    assert per_step[5] == pytest.approx(13 / 10)
    assert totals[-1] == pytest.approx(bench.total_speedup(report))
    assert bench.slope_fits(report)["kvlab-cache"].slope == pytest.approx(1.0)
    lines = bench.slope_lines(report)
    assert lines[0].startswith("kvlab-cache    total decode time ~ n^1.00")
    assert "cost model: n^1.00" in lines[0]


def test_gap_sentences_say_where_the_model_is_off():
    report = fake_report(prompt_len=8, new_tokens=20)
    sentences = bench.gap_sentences(report)
    model = bench.predicted_ms(report, "kvlab-cache")[1]  # 324 MB at 40 GB/s: about 8.1 ms
    assert 10 / model > 1.0
    assert sentences[0].startswith("Cached decode: measured 1.23x the cost model")
    assert any(s.startswith("Uncached, late steps") for s in sentences)


def test_report_without_rates_or_spec_is_a_clear_error():
    report = fake_report()
    report.results = report.results[:-1]  # no floor
    with pytest.raises(ValueError, match="no measured rates"):
        bench.predicted_ms(report, "kvlab-cache")
    report = fake_report()
    report.spec = None
    with pytest.raises(ValueError, match="no model shapes"):
        bench.predicted_ms(report, "kvlab-cache")


def test_lesson_sizes_shrink_in_quick_mode(monkeypatch):
    monkeypatch.setenv("KVLAB_QUICK", "1")
    quick = bench.lesson_sizes()
    monkeypatch.setenv("KVLAB_QUICK", "0")
    full = bench.lesson_sizes()
    assert quick["new_tokens"] < full["new_tokens"] and full["new_tokens"] >= 256


# --- the real harness: rates, devices ---------------------------------------------------

def test_benchmark_records_rates_spec_and_device(tiny_gpt2):
    report = bench.benchmark(tiny_gpt2, 8, 5, repeats=1, modes=["kvlab-cache"],
                             progress=False, device="cpu")
    floor = report.result("floor")
    assert floor["bytes_per_s"] > 0 and floor["flops_per_s"] > 0
    assert report.machine["device"] == "cpu"
    assert report.spec == bench.spec_of(tiny_gpt2)
    assert len(bench.predicted_ms(report, "kvlab-cache")) == 5


def test_progress_can_be_any_bar_factory(tiny_gpt2):
    made = []

    def bar(**options):
        from tqdm import tqdm

        made.append(tqdm(disable=True, **options))
        return made[-1]

    bench.benchmark(tiny_gpt2, 8, 3, repeats=1, modes=["kvlab-cache"], progress=bar)
    assert made and made[0].total == 3  # warm-up + 1 repeat + the floor


def test_device_errors_and_optional_gpu_column(tiny_gpt2):
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or None, got 'gpu!'"):
        bench.benchmark(tiny_gpt2, 8, 3, device="gpu!", progress=False)
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the CPU-only behaviour is not testable here")
    with pytest.raises(ValueError, match="CUDA is not available here"):
        bench.benchmark(tiny_gpt2, 8, 3, device="cuda", progress=False)
    assert bench.gpu_report(tiny_gpt2, 8, 3, 1) is None  # skipped cleanly, nothing raised


def test_a_quiet_run_gets_no_noise_warning():
    assert bench.noise_sentences(fake_report(new_tokens=24)) == []


def test_disturbed_runs_are_called_out():
    report = fake_report(new_tokens=24)
    cached = report.result("kvlab-cache")
    cached["step_ms"] = cached["step_ms"][:13] + [300.0] * 11  # late steps slowed down
    cached["total_s_max"] = 2 * cached["total_s_min"]  # and the repeats disagree
    sentences = bench.noise_sentences(report)
    assert "repeats or steps disagree widely: kvlab-cache" in sentences[0]
    assert "fit gives kvlab-cache ~ n^" in sentences[1]
    assert bench.gap_sentences(report)[:2] == sentences


def test_fits_use_the_fastest_repeat_when_known():
    report = fake_report(new_tokens=24)
    cached = report.result("kvlab-cache")
    cached["step_ms_min"] = list(cached["step_ms"])
    cached["step_ms"] = cached["step_ms"][:13] + [300.0] * 11  # one repeat was disturbed
    assert bench.slope_fits(report)["kvlab-cache"].slope == pytest.approx(1.0, abs=0.05)
