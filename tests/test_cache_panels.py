"""The stepper panel and the cache calculator, driven as a student would (clicks, typing)."""

import matplotlib
import pytest

import kvlab
from kvlab.bench import PRESETS
from kvlab.widgets import CacheCalculator, StepperPanel, output_text

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def lm():
    return kvlab.load("random:tiny-llama", verbose=False)


def test_stepper_panel_steps_looks_back_and_starts_over(lm):
    panel = StepperPanel(lm, "Hello there", max_new_tokens=3)
    assert len(panel.stepper.steps) == 1  # the prefill is shown at once
    panel.next_token.click()
    panel.next_token.click()
    assert panel.step_slider.max == panel.step_slider.value == 2
    assert panel.next_token.disabled  # max_new_tokens reached
    assert "decode" in panel.info.value
    panel.step_slider.value = 0  # looking back recomputes nothing
    assert "prefill" in panel.info.value and len(panel.stepper.steps) == 3
    panel.layer.value, panel.head.value = lm.n_layers - 1, lm.n_heads - 1
    panel.prompt.value = "A new prompt"
    panel.restart.click()
    assert panel.stepper.prompt_ids == lm.encode("A new prompt")
    assert len(panel.stepper.steps) == 1 and panel.step_slider.max == 0
    assert not panel.next_token.disabled


def test_stepper_panel_keeps_working_after_a_bad_prompt(lm):
    panel = StepperPanel(lm, "Hello there", max_new_tokens=3)
    panel.prompt.value = ""
    panel.restart.click()  # refused: shown in the panel, not raised
    assert len(panel.stepper.steps) == 1 and panel.stepper.prompt_ids == lm.encode("Hello there")
    panel.next_token.click()
    assert len(panel.stepper.steps) == 2


def test_calculator_shows_presets_and_recomputes(lm):
    calculator = CacheCalculator(lm, preset="SmolLM2-135M", context=1000)
    calculator.dtype.value = "float32"
    assert f"{2 * 30 * 3 * 64 * 1000 * 4:,} bytes" in calculator.result.value
    calculator.preset.value = "Llama-3-8B"
    assert calculator.n_kv_heads.value == PRESETS["Llama-3-8B"].n_kv_heads
    calculator.context.value, calculator.dtype.value = 8192, "float16"
    assert f"{2 ** 30:,} bytes" in calculator.result.value
    calculator.preset.value = f"loaded: {lm.name}"
    assert calculator.n_layers.value == lm.n_layers


def test_calculator_bad_value_clears_the_result_and_recovers():
    calculator = CacheCalculator(preset="SmolLM2-135M")
    calculator.n_kv_heads.value = 4  # 9 query heads are not a multiple of 4
    assert calculator.result.value == ""
    assert "multiple of n_kv_heads" in output_text(calculator.errors)
    calculator.n_kv_heads.value = 9
    assert "bytes" in calculator.result.value
    assert output_text(calculator.errors) == ""  # the old error is gone with the fix
    with pytest.raises(ValueError, match="unknown preset"):
        CacheCalculator(preset="nope")
