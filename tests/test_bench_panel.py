"""The benchmark panel: runs in the background, Stop keeps what finished, long runs ask
first, bad input is shown in the panel, which keeps working. Tiny sizes; no timing asserted."""

import pytest

from kvlab import widgets
from kvlab.widgets import output_text


@pytest.fixture()
def panel(tiny_gpt2):
    panel = widgets.BenchmarkPanel(tiny_gpt2, prompt_len=8, new_tokens=4, repeats=1,
                                   long_run_s=1e9)
    yield panel
    panel._on_stop()
    panel.wait(60)


def test_run_in_background_shows_table_and_plot(panel):
    panel.run_button.click()
    report = panel.wait(120)
    assert report is not None and not report.stopped_early
    assert report.modes == ["kvlab-cache", "kvlab-nocache", "hf-cache", "hf-nocache", "floor"]
    text = output_text(panel.output)
    assert "kvlab-cache" in text and "x the floor" in text
    assert any("image/png" in item.get("data", {}) for item in panel.output.outputs)
    assert panel.status.value == "done" and not panel.run_button.disabled
    assert panel.bar_area.children  # the tqdm bar lives in the panel


def test_stop_keeps_what_finished(panel):
    panel.new_tokens.value, panel.repeats.value = 30, 3
    panel.run_button.click()
    panel.stop_button.click()
    report = panel.wait(120)
    assert report.stopped_early
    assert "floor" not in report.modes
    assert "stopped" in panel.status.value


def test_bad_input_is_shown_and_the_panel_keeps_working(panel):
    panel.new_tokens.value = 300  # over tiny-gpt2's 256-token context
    panel.run_button.click()
    assert "context limit of 256" in output_text(panel.output)
    assert not panel.running
    for box in panel.mode_boxes.values():
        box.value = False
    panel.run_button.click()
    assert "tick at least one mode" in output_text(panel.output)
    panel.mode_boxes["kvlab-cache"].value = True
    panel.new_tokens.value = 3
    panel.run_button.click()
    assert panel.wait(120).modes == ["kvlab-cache", "floor"]


def test_unknown_model_is_shown_in_the_panel(panel):
    panel.model.value = "no-such-model"
    panel.run_button.click()
    assert "unknown model 'no-such-model'" in output_text(panel.output)


def test_long_run_asks_first(panel):
    panel.long_run_s = 0.0  # every run counts as long
    panel.mode_boxes["hf-cache"].value = panel.mode_boxes["hf-nocache"].value = False
    panel.run_button.click()
    assert not panel.running and panel.report is None
    assert panel.run_button.description.startswith("Run anyway (~")
    assert "would take about" in output_text(panel.output)
    panel.run_button.click()  # the same request again: confirmed
    assert panel.wait(120) is not None
    assert panel.run_button.description == "Run"


def test_no_gpu_choice_without_cuda(panel):
    import torch

    if torch.cuda.is_available():
        assert "cuda" in panel.device.options
    else:
        assert panel.device.options == ("cpu",) and panel.device.layout.display == "none"
