"""The attention explorer driven as a student would: set sliders, type texts, switch models,
and check that what is drawn is the selected head's data (cases C1, C7, C8, C9, C10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kvlab.attention
from kvlab import plots, widgets
from kvlab.widgets import AttentionExplorer, GeneratedAttentionPanel, cached_model, output_text

C1_TEXT = "Line one\nLine two 🙂 naïve"


@pytest.fixture(scope="module")
def tiny():
    return cached_model("random:tiny-gpt2")


@pytest.fixture()
def explorer(tiny):
    explorer = AttentionExplorer(tiny, "The cat sat on the mat. Then the cat slept.")
    explorer.panel()  # builds every view
    return explorer


def drawn(view) -> np.ndarray:
    return view.heatmap.matrix().filled(np.nan)


def expected(maps, layer, head) -> np.ndarray:
    return plots.masked_causal(maps.head(layer, head)).filled(np.nan)


def test_head_view_draws_the_selected_head(explorer):
    view = explorer._views["head"]
    for layer, head in [(0, 0), (1, 3), (0, 2)]:
        explorer.layer.value, explorer.head.value = layer, head
        np.testing.assert_array_equal(drawn(view), expected(explorer.maps, layer, head))
        assert f"layer {layer}, head {head}" in view.heatmap.title.get_text()
    assert bytes(view.image.value[:4]) == b"\x89PNG"


def test_masked_future_is_drawn_apart_from_zero_weight(explorer):
    view = explorer._views["head"]
    matrix = view.heatmap.matrix()
    n = matrix.shape[0]
    assert (matrix.mask == np.triu(np.ones((n, n), dtype=bool), 1)).all()  # exactly the future
    assert view.heatmap.image.cmap.get_bad()[3] == 0  # masked cells are see-through ...
    assert view.heatmap.ax.patch.get_hatch() == plots.MASK_HATCH  # ... onto a hatched grey
    assert view.heatmap.image.cmap(0.0)[:3] != plots.matplotlib.colors.to_rgb(plots.MASK_FACE)
    assert view.heatmap.colorbar.ax.get_ylabel() == "attention weight"


@pytest.mark.parametrize("name, ticks", [
    ("random:distilgpt2", ["Line", "␣one", "↵", "Line", "␣two", "␣<U+1F642>", "␣naïve"]),
    ("smollm2-135m", ["Line", "␣one", "↵", "Line", "␣two", "␣<U+1F642>", "␣na", "ïve"]),
])
def test_c1_labels_in_the_heatmap_and_the_focus_view(name, ticks):
    explorer = AttentionExplorer(cached_model(name), C1_TEXT)
    explorer.head_view()
    ax = explorer._views["head"].heatmap.ax
    # the default font has no emoji glyph: the figure names it instead of drawing a blank box
    assert [t.get_text() for t in ax.get_xticklabels()] == ticks
    assert [t.get_text() for t in ax.get_yticklabels()] == ticks
    explorer.focus_view()
    focus = explorer._views["focus"]
    focus.query.value = 5
    assert "␣🙂" in focus.query_label.value  # HTML shows the real character


def test_sliders_follow_the_model(explorer):
    explorer.use_model("random:distilgpt2")  # 6 layers x 12 heads
    assert (explorer.layer.max, explorer.head.max) == (5, 11)
    explorer.layer.value, explorer.head.value = 5, 11
    np.testing.assert_array_equal(drawn(explorer._views["head"]), expected(explorer.maps, 5, 11))
    assert explorer.maps.model_name == "random:distilgpt2"
    explorer.use_model("random:tiny-gpt2")  # 2 x 4: the selection is clamped, then drawn
    assert (explorer.layer.max, explorer.head.max) == (1, 3)
    assert (explorer.layer.value, explorer.head.value) == (1, 3)
    np.testing.assert_array_equal(drawn(explorer._views["head"]), expected(explorer.maps, 1, 3))
    assert cached_model("random:distilgpt2") is cached_model("random:distilgpt2")  # loaded once


def test_model_picker_offers_models_available_here(explorer):
    assert "random:tiny-gpt2" in explorer.model_picker.options
    assert "random:tiny-llama" in explorer.model_picker.options
    explorer.model_picker.value = "random:tiny-llama"
    assert explorer.maps.model_name == "random:tiny-llama"


def test_focus_view_names_the_top_keys(explorer):
    view = explorer._views["focus"]
    explorer.layer.value, explorer.head.value = 1, 2
    view.query.value = 5
    row = explorer.maps.head(1, 2)[5, :6]
    top = int(row.argmax())
    assert view.bars.top_keys[0][:2] == (top, explorer.maps.labels[top])
    assert [bar.get_height() for bar in view.bars.bars] == pytest.approx(row.tolist())
    assert explorer.maps.labels[top] in view.top_line.value


def test_layer_view_shows_every_head_of_the_layer(explorer):
    view = explorer._views["layer"]
    explorer.layer.value, explorer.head.value = 1, 2
    for head, image in enumerate(view.grid.images):
        np.testing.assert_array_equal(image.get_array().filled(np.nan),
                                      expected(explorer.maps, 1, head))
    assert view.grid.frame.get_visible()


def test_model_view_opens_the_selected_head(explorer):
    view = explorer._views["model"]
    explorer.layer.value, explorer.head.value = 1, 3
    tile = view.mosaic.tile
    assert view.mosaic.marker.get_xy() == (3 * tile - 0.5, 1 * tile - 0.5)
    np.testing.assert_array_equal(drawn(view), expected(explorer.maps, 1, 3))
    n_layers, n_heads = explorer.maps.n_layers, explorer.maps.n_heads
    assert view.mosaic.image.get_array().shape == (n_layers * tile, n_heads * tile)


def test_summary_table_sorts(explorer):
    view = explorer._views["summary"]
    summaries = explorer.maps.summaries()
    for column in ("entropy", "first", "previous", "self"):
        view.sort_by.value = column
        values = [row[column] for row in view.rows()]
        assert values == sorted(values, reverse=True)
        assert len(values) == explorer.maps.n_layers * explorer.maps.n_heads
    view.order.value = "lowest first"
    layer, head = view.rows()[0]["layer"], view.rows()[0]["head"]
    assert summaries.self[layer, head] == summaries.self.min()
    assert "background:#ffe0e0" in view.table.value  # the selected head is highlighted


def test_c7_512_tokens_render_and_sliders_never_rerun_the_model(monkeypatch):
    lm = cached_model("random:distilgpt2")
    text = lm.decode(lm.encode("The quick brown fox jumps over the lazy dog. " * 60)[:512])
    runs = []
    real_forward = kvlab.attention.forward
    monkeypatch.setattr(kvlab.attention, "forward",
                        lambda *args, **kwargs: runs.append(1) or real_forward(*args, **kwargs))
    explorer = AttentionExplorer(lm, text)
    explorer.panel()
    assert explorer.maps.n_tokens == 512 and len(runs) == 1
    heatmap = explorer._views["head"].heatmap
    full_draws = heatmap.full_draws
    for layer, head in [(1, 0), (5, 11), (3, 7), (0, 4)]:
        explorer.layer.value, explorer.head.value = layer, head
        np.testing.assert_array_equal(drawn(explorer._views["head"]),
                                      expected(explorer.maps, layer, head))
    explorer._views["focus"].query.value = 100
    assert len(runs) == 1 and explorer.model_runs == 1  # controls only redraw
    assert heatmap.full_draws == full_draws  # and reuse the drawn axes and labels
    assert len(heatmap.ax.get_xticklabels()) <= plots.MAX_TICK_LABELS


def test_c9_and_bad_text_show_in_the_panel_which_keeps_working(explorer):
    before = explorer.maps
    explorer.show_text(["The cat sat.", "A second, much longer prompt than the first one."])
    assert "one text at a time, got a batch of 2 texts" in output_text(explorer.messages)
    assert explorer.maps is before  # the last good maps stay on screen
    explorer.show_text("")
    assert "the text is empty" in output_text(explorer.messages)
    explorer.show_text("x" + " x" * 299)
    assert "300 tokens, over random:tiny-gpt2's context limit of 256 tokens" in \
        output_text(explorer.messages)
    explorer.use_model("no-such-model")
    assert "unknown model" in output_text(explorer.messages)
    assert explorer.model_picker.value == "random:tiny-gpt2"
    explorer.show_text("Back to work.")  # still alive
    assert output_text(explorer.messages) == "" and explorer.maps.labels[-1] == "."
    explorer.head.value = 2
    np.testing.assert_array_equal(drawn(explorer._views["head"]),
                                  expected(explorer.maps, explorer.layer.value, 2))


def test_c9_explorer_built_with_a_batch_still_renders(tiny):
    explorer = AttentionExplorer(tiny, ["first text", "second, longer text"])
    explorer.panel()
    assert "one text at a time" in output_text(explorer.messages)
    explorer.text_box.value = "now one text"
    explorer.show_button.click()
    assert explorer.maps.n_tokens == 3


def test_c8_step_slider_shows_each_generated_tokens_row(tiny):
    panel = GeneratedAttentionPanel(tiny, "The capital of France is", max_new_tokens=10)
    result = panel.result
    assert panel.step.max == 9 and result.n_steps == 10
    for step, layer, head in [(0, 0, 0), (4, 1, 2), (9, 1, 3)]:
        panel.layer.value, panel.head.value, panel.step.value = layer, head, step
        assert [bar.get_height() for bar in panel.bars.bars] == pytest.approx(
            result.row(step, layer, head).tolist())
        assert len(panel.bars.bars) == result.n_prompt + step  # everything before, and itself
        assert panel.heatmap.marker.get_xy()[1] == step - 0.5
        rows = panel.heatmap.matrix()
        assert torch.allclose(torch.tensor(rows.filled(0.0)[step]),
                              result.matrix(layer, head)[step])
    panel.prompt_box.value = ""
    panel.generate_button.click()
    assert "empty" in output_text(panel.messages) and panel.result is result


def test_c10_bertviz_offline_says_so_in_one_line(explorer, monkeypatch):
    monkeypatch.setenv("KVLAB_OFFLINE", "1")
    assert widgets.cdn_reachable() == (False, "KVLAB_OFFLINE is set")
    for kind in ("head", "model"):
        notice = widgets.bertviz_view(explorer.maps, kind)
        assert isinstance(notice, widgets.Notice) and "\n" not in notice
        assert f"bertviz {kind}_view is not shown" in notice and widgets.CDN_HOST in notice
    monkeypatch.delenv("KVLAB_OFFLINE")
    monkeypatch.setattr(widgets, "cdn_reachable", lambda timeout=1.5: (False, "no network"))
    assert "no network" in widgets.bertviz_view(explorer.maps)


def test_c10_bertviz_online_gets_our_readable_labels(monkeypatch):
    monkeypatch.setattr(widgets, "cdn_reachable", lambda timeout=1.5: (True, ""))
    maps = kvlab.attention.attention_maps(cached_model("random:tiny-gpt2"), C1_TEXT)
    html = widgets.bertviz_view(maps, "head").data
    assert "require.min.js" in html and "\\u2423one" in html and "\\u010a" not in html
    with pytest.raises(ValueError, match="kind must be 'head' or 'model'"):
        widgets.bertviz_view(maps, "neuron")
