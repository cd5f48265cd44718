"""Notebook 03's exercise checks, with right and wrong answers."""

from kvlab import bench, checks

SMOL = bench.PRESETS["SmolLM2-135M"]
DISTIL = bench.PRESETS["DistilGPT-2"]


def right_ratio(prompt_len, new_tokens):
    cached = prompt_len + (new_tokens - 1)
    uncached = new_tokens * prompt_len + new_tokens * (new_tokens - 1) / 2
    return uncached / cached


def test_work_ratio_by_hand():
    # 32 + 256: cached 32 + 255 = 287 rows; uncached 256 x 32 + 256 x 255 / 2 = 40,832 rows
    assert checks.work_ratio_reference(32, 256) == 40_832 / 287


def test_work_ratio_right_answer():
    result = checks.check_work_ratio(right_ratio)
    assert result.ok and "142x" in result.message


def test_work_ratio_wrong_answers_get_specific_hints():
    upside_down = checks.check_work_ratio(lambda p, n: 1 / right_ratio(p, n))
    assert not upside_down and "upside down" in upside_down.hint
    no_prefill = checks.check_work_ratio(
        lambda p, n: sum(p + s for s in range(1, n)) / (n - 1) if n > 1 else 1.0)
    assert not no_prefill and "step 0" in no_prefill.hint
    no_prompt = checks.check_work_ratio(lambda p, n: (n + 1) / 2)
    assert not no_prompt and "recomputes the prompt" in no_prompt.hint
    other = checks.check_work_ratio(lambda p, n: n)
    assert not other and "count token rows" in other.hint


def test_work_ratio_template_raising_and_non_function():
    assert "returns nothing yet" in checks.check_work_ratio(lambda p, n: ...).message
    raised = checks.check_work_ratio(lambda p, n: 1 / 0)
    assert not raised and "raised ZeroDivisionError" in raised.message
    assert "pass your function itself" in checks.check_work_ratio(3.0).message


def test_decode_bound_right_answer():
    position, rate = 287, 20e9
    bytes_per_step = SMOL.matmul_params * 4 + 2 * 30 * 3 * 64 * (position + 1) * 4
    result = checks.check_decode_bound(bytes_per_step, bytes_per_step / rate * 1e3, SMOL,
                                       position, rate)
    assert result.ok and "551.2 MB per step" in result.message


def test_decode_bound_wrong_answers_get_specific_hints():
    position, rate = 287, 20e9
    weights = SMOL.matmul_params * 4
    right = weights + 2 * 30 * 3 * 64 * 288 * 4

    def hint(bytes_per_step, ms=None):
        ms = bytes_per_step / rate * 1e3 if ms is None else ms
        return checks.check_decode_bound(bytes_per_step, ms, SMOL, position, rate).hint

    assert "weights only" in hint(weights)
    assert "4 bytes" in hint(right / 4)
    assert "n_kv_heads = 3" in hint(weights + 2 * 30 * 9 * 64 * 288 * 4)
    assert "position + 1 = 288" in hint(weights + 2 * 30 * 3 * 64 * 287 * 4)
    assert "seconds" in hint(right, right / rate)  # min_ms given in seconds
    assert "bytes / (bytes per second)" in hint(right, 1.0)


def test_decode_bound_template_and_bad_values():
    assert "fill in" in checks.check_decode_bound(..., ..., DISTIL, 10, 1e10).message
    assert "positive number" in checks.check_decode_bound(-1, 1.0, DISTIL, 10, 1e10).message


def test_solutions_are_there_but_not_printed():
    namespace = {}
    exec(checks.solution("work_ratio"), namespace)
    assert checks.check_work_ratio(namespace["work_ratio"]).ok
    namespace = dict(spec=SMOL, position=100, bytes_per_s=3e10)
    exec(checks.solution("decode_bound"), namespace)
    assert checks.check_decode_bound(namespace["bytes_per_step"], namespace["min_ms"], SMOL, 100,
                                     3e10).ok
