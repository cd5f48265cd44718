"""ipywidgets panels used by the notebooks.

Every panel follows one rule: a bad value shows an error line in the panel's own output
area, the panel keeps working, and nothing the student typed is lost.
"""

from __future__ import annotations

from contextlib import contextmanager

import ipywidgets as widgets
from IPython.display import HTML, display


def error_html(message: str) -> HTML:
    return HTML(f'<div style="color:#b00020;font-weight:600">{message}</div>')


@contextmanager
def errors_shown_in(output: widgets.Output):
    """Run a panel callback; a ValueError (bad input) is shown in `output`, not raised."""
    try:
        yield
    except ValueError as err:  # the kit raises ValueError (or a subclass) for bad input
        with output:
            display(error_html(f"{type(err).__name__}: {err}"))


# =============================================================================================
# Notebook 02 (cache mechanics): the decode stepper panel and the cache size calculator
# =============================================================================================

import inspect  # noqa: E402
from html import escape  # noqa: E402  (kept in this section to keep merges easy)

import matplotlib.pyplot as plt  # noqa: E402
from IPython.display import Markdown, clear_output  # noqa: E402

from .bench import DTYPE_BYTES, PRESETS, ModelSpec, spec_of  # noqa: E402
from .memory import cache_size, dtype_bytes, human_bytes, reshaped  # noqa: E402
from .plots import cache_step_figure, token_text  # noqa: E402
from .stepper import DecodeStepper  # noqa: E402


def _table_html(rows, header=None) -> str:
    """A small HTML table; every cell escaped."""
    cell = 'style="text-align:left;padding:1px 10px 1px 0"'
    head = "".join(f"<th {cell}>{escape(str(h))}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td {cell}>{escape(str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


def code_block(obj) -> Markdown:
    """The source of a kvlab function or class, read from the installed file (never a copy)."""
    return Markdown(f"```python\n{inspect.getsource(obj)}```")


def shapes_html(stepper, steps: list[int]) -> HTML:
    """The tensor shapes of several steps side by side (e.g. the prefill and a decode step)."""
    tables = [stepper.shapes(step) for step in steps]
    header = ["tensor"] + [f"step {s} ({stepper.record(s).kind})" for s in steps]
    rows = [[name] + ["[" + ", ".join(map(str, table[i][1])) + "]" for table in tables]
            for i, (name, _, _) in enumerate(tables[0])]
    return HTML(_table_html(rows, header))


def comparison_html(comparison, lm) -> HTML:
    """An exactness.RunComparison as a table: step, both tokens, largest logit difference."""
    header = ["step", comparison.label_a, comparison.label_b, "largest |logit difference|"]
    return HTML(_table_html(comparison.table(lm.decode), header))


def gqa_html(specs: list[ModelSpec], n_tokens: int, dtype: str = "float32") -> HTML:
    """Cache bytes of each model as built vs with one KV head per query head."""
    rows = []
    for spec in specs:
        size = cache_size(spec, n_tokens, 1, dtype)
        rows.append([spec.name, spec.n_heads, spec.n_kv_heads, human_bytes(size.cache_bytes),
                     human_bytes(size.multi_head_cache_bytes),
                     f"{size.multi_head_cache_bytes / size.cache_bytes:.0f}x"])
    header = ["model", "query heads", "KV heads", f"cache, {n_tokens:,} tokens ({dtype})",
              "with full multi-head", "multi-head / actual"]
    return HTML(_table_html(rows, header))


class StepperPanel(widgets.VBox):
    """Step through greedy decoding: 'next token' advances the real decode state one step;
    the step slider looks back at any step taken; layer/head choose what is drawn."""

    def __init__(self, lm, prompt: str, max_new_tokens: int = 24):
        self.stepper = DecodeStepper(lm, prompt, max_new_tokens)
        self.prompt = widgets.Text(value=prompt, description="prompt",
                                   layout=widgets.Layout(width="60%"))
        self.restart = widgets.Button(description="start over with this prompt",
                                      layout=widgets.Layout(width="auto"))
        self.next_token = widgets.Button(description="next token", button_style="primary")
        self.step_slider = widgets.IntSlider(0, 0, 0, description="step")
        self.layer = widgets.IntSlider(0, 0, lm.n_layers - 1, description="layer")
        self.head = widgets.IntSlider(0, 0, lm.n_heads - 1, description="head")
        self.errors = widgets.Output()
        self.info = widgets.HTML()
        self.figure = widgets.Output()
        super().__init__([
            widgets.HBox([self.prompt, self.restart]),
            widgets.HBox([self.next_token, self.step_slider]),
            widgets.HBox([self.layer, self.head]),
            self.errors, self.info, self.figure])

        self.restart.on_click(lambda _: self.start_over())
        self.next_token.on_click(lambda _: self.advance())
        for control in (self.step_slider, self.layer, self.head):
            control.observe(lambda _: self.redraw(), names="value")
        self.stepper.step()  # the prefill, so there is something to show
        self._show_latest()

    def advance(self) -> None:
        """One more decode step (one forward pass of one token), then show it."""
        with errors_shown_in(self.errors):
            self.errors.clear_output()
            self.stepper.step()
            self._show_latest()

    def start_over(self) -> None:
        """Reset the cache with the prompt in the text box and run its prefill."""
        with errors_shown_in(self.errors):
            self.errors.clear_output()
            self.stepper.reset(self.prompt.value)
            self.stepper.step()
            self._show_latest()

    def _show_latest(self) -> None:
        latest = len(self.stepper.steps) - 1
        with self.step_slider.hold_trait_notifications():
            self.step_slider.max = latest
            self.step_slider.value = latest
        self.next_token.disabled = self.stepper.done
        self.redraw()

    def redraw(self) -> None:
        """Draw the chosen step, layer and head from what is stored (no model call)."""
        step = self.step_slider.value
        self.info.value = self._info_html(step)
        with self.figure:
            clear_output(wait=True)
            fig = cache_step_figure(self.stepper, self.layer.value, self.head.value, step)
            display(fig)
            plt.close(fig)

    def _info_html(self, step: int) -> str:
        stepper = self.stepper
        record = stepper.record(step)
        totals = stepper.totals(step)
        saved = 1 - totals["flops"] / totals["flops_recomputing"]
        text = _tokens_html(stepper, record)
        work = [
            ("this step", f"{record.kind}: {record.n_new} position(s) computed, "
                          f"{record.n_cached} reused from the cache"),
            ("so far, with the cache", f"{totals['positions_computed']} positions computed, "
                                       f"{totals['positions_reused']} reused; "
                                       f"{totals['flops'] / 1e9:.3f} GFLOPs"),
            ("so far, recomputing", f"{totals['positions_recomputing']} positions computed; "
                                    f"{totals['flops_recomputing'] / 1e9:.3f} GFLOPs"),
            ("saved by the cache", f"{saved:.0%} of the FLOPs"),
            ("cache now holds", f"{stepper.cache.length} positions, "
                                f"{stepper.cache.nbytes:,} bytes"),
        ]
        shapes = [(name, "[" + ", ".join(map(str, shape)) + "]", meaning)
                  for name, shape, meaning in stepper.shapes(step)]
        return (f"<div>{text}</div>{_table_html(work)}"
                f"<details><summary>shapes at step {record.index} (one layer)</summary>"
                f"{_table_html(shapes, ['tensor', 'shape', 'holds'])}</details>")


def _tokens_html(stepper, record) -> str:
    """Prompt tokens grey, tokens fed at this step outlined, the chosen next token green."""
    parts = []
    for position, token in enumerate(stepper.ids[:record.n_total]):
        label = escape(token_text(stepper.lm, token))
        if position >= record.n_cached:
            style = "outline:2px solid #e66100"
        elif position < len(stepper.prompt_ids):
            style = "color:#777"
        else:
            style = ""
        parts.append(f'<span style="{style};margin-right:2px">{label}</span>')
    chosen = escape(token_text(stepper.lm, record.next_id))
    parts.append(f'&nbsp;&rarr;&nbsp;<b style="color:#1a7f37">{chosen}</b>')
    return "".join(parts)


class CacheCalculator(widgets.VBox):
    """KV cache bytes for any shape, with presets from public configs, beside weight bytes."""

    def __init__(self, lm=None, preset: str = "Llama-3-8B", context: int = 8192):
        self.presets = dict(PRESETS)
        if lm is not None:
            self.presets[f"loaded: {lm.name}"] = spec_of(lm)
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(self.presets)}")
        self.preset = widgets.Dropdown(options=list(self.presets), value=preset,
                                       description="preset")
        self.n_layers = widgets.IntText(description="layers")
        self.n_heads = widgets.IntText(description="query heads")
        self.n_kv_heads = widgets.IntText(description="KV heads")
        self.head_dim = widgets.IntText(description="head_dim")
        self.context = widgets.IntText(value=context, description="context")
        self.batch = widgets.IntText(value=1, description="batch")
        self.dtype = widgets.Dropdown(options=list(DTYPE_BYTES), value="float16",
                                      description="dtype")
        self.errors = widgets.Output()
        self.result = widgets.HTML()
        super().__init__([
            self.preset,
            widgets.HBox([self.n_layers, self.n_heads]),
            widgets.HBox([self.n_kv_heads, self.head_dim]),
            widgets.HBox([self.context, self.batch, self.dtype]),
            self.errors, self.result])
        self._loading = False
        self.preset.observe(lambda _: self.load_preset(), names="value")
        for control in (self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim,
                        self.context, self.batch, self.dtype):
            control.observe(lambda _: self.recompute(), names="value")
        self.load_preset()

    def load_preset(self) -> None:
        """Fill the shape fields from the chosen preset."""
        spec = self.presets[self.preset.value]
        self._loading = True
        self.n_layers.value, self.n_heads.value = spec.n_layers, spec.n_heads
        self.n_kv_heads.value, self.head_dim.value = spec.n_kv_heads, spec.head_dim
        self._loading = False
        self.recompute()

    def recompute(self) -> None:
        """Recompute and show the sizes; a bad field shows an error line instead."""
        if self._loading:
            return
        self.errors.clear_output()
        with errors_shown_in(self.errors):
            self.result.value = ""
            spec = reshaped(self.presets[self.preset.value], n_layers=self.n_layers.value,
                            n_heads=self.n_heads.value, n_kv_heads=self.n_kv_heads.value,
                            head_dim=self.head_dim.value)
            size = cache_size(spec, self.context.value, self.batch.value, self.dtype.value)
            self.result.value = _size_html(size)


def size_table(size) -> HTML:
    """A memory.CacheSize as a table: cache, per token, weights, multi-head equivalent."""
    return HTML(_size_html(size))


def _size_html(size) -> str:
    spec = size.spec
    rows = [
        ("KV cache", f"{human_bytes(size.cache_bytes)} ({size.cache_bytes:,} bytes)"),
        ("per token (whole batch)", f"{human_bytes(size.per_token_bytes)} "
                                    f"({size.per_token_bytes:,} bytes)"),
        ("weights", f"{human_bytes(size.weight_bytes)} ({spec.n_params / 1e6:,.0f}M "
                    f"parameters in {size.dtype})"),
        ("cache / weights", f"{size.cache_to_weights:.2f}"),
        ("with full multi-head attention", f"{human_bytes(size.multi_head_cache_bytes)} "
                                           f"({spec.n_heads} KV heads instead of "
                                           f"{spec.n_kv_heads})"),
    ]
    formula = (f"2 (keys and values) x {spec.n_layers} layers x {size.batch} batch x "
               f"{spec.n_kv_heads} KV heads x {spec.head_dim} head_dim x {size.n_tokens:,} "
               f"tokens x {dtype_bytes(size.dtype)} bytes = {size.cache_bytes:,} bytes")
    return f"{_table_html(rows)}<div style='color:#555'>{escape(formula)}</div>"
