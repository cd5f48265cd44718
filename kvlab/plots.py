"""matplotlib figures used by the notebooks."""

from __future__ import annotations

# =============================================================================================
# Notebook 02 (cache mechanics): the cache at one decode step, cache bytes as a sequence grows
# =============================================================================================
import matplotlib.pyplot as plt  # noqa: E402  (kept in this section to keep merges easy)
from matplotlib.patches import Rectangle  # noqa: E402

NEW_ROWS_COLOUR = "#e66100"  # positions computed at this step


def token_text(lm, token_id: int) -> str:
    """One token as a short readable label: a space shows as '␣', a newline as '⏎'."""
    text = lm.decode([token_id])
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def cache_step_figure(stepper, layer: int, head: int, step: int | None = None):
    """Cached keys and values (positions x head_dim) of one layer/head at one step, the rows
    computed at that step outlined, and the new queries' attention over those keys."""
    record = stepper.record(step)
    keys, values = stepper.keys_values(layer, head, record.index)  # [T, hd] each
    probs = stepper.attention(layer, head, record.index)  # [n, T]
    n_total, head_dim = keys.shape
    labels = [f"{p}: {token_text(stepper.lm, t)}"
              for p, t in enumerate(stepper.ids[:n_total])]

    height = min(9.0, max(3.2, 1.6 + 0.22 * n_total))
    fig, (ax_k, ax_v, ax_a) = plt.subplots(
        1, 3, figsize=(12, height), sharey=True, gridspec_kw=dict(width_ratios=[3, 3, 2]))
    kv_head = stepper.kv_head_of(head)
    for ax, tensor, name in [(ax_k, keys, "keys"), (ax_v, values, "values")]:
        limit = float(tensor.abs().max()) or 1.0
        ax.imshow(tensor.numpy(), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                  interpolation="nearest")
        ax.add_patch(Rectangle((-0.5, record.n_cached - 0.5), head_dim, record.n_new,
                               fill=False, edgecolor=NEW_ROWS_COLOUR, linewidth=2.5))
        ax.set_title(f"cached {name}, layer {layer}, KV head {kv_head}\n"
                     f"[{n_total} positions x {head_dim}]", fontsize=10)
        ax.set_xlabel("head_dim channel")
    step_positions = max(1, n_total // 30)
    ax_k.set_yticks(range(0, n_total, step_positions))
    ax_k.set_yticklabels(labels[::step_positions], fontsize=8)
    ax_k.set_ylabel("position (token)")

    if record.kind == "decode":  # one query: its weights over every key, one bar each
        colours = ["#888888"] * record.n_cached + [NEW_ROWS_COLOUR]
        ax_a.barh(range(n_total), probs[0].numpy(), color=colours, height=0.8)
        ax_a.set_xlim(0, 1)
        ax_a.set_xlabel("attention weight")
        ax_a.set_title(f"the new query (head {head}) over\nall {n_total} keys", fontsize=10)
    else:  # the prefill: every prompt position is a query; keys down, queries across
        first = record.first_query_kept  # a very long prefill keeps only its last rows
        ax_a.imshow(probs.T.numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1,
                    interpolation="nearest", extent=(first - 0.5, n_total - 0.5,
                                                     n_total - 0.5, -0.5))
        ax_a.set_xlabel("query position")
        shown = "" if first == 0 else f"last {n_total - first} of "
        ax_a.set_title(f"prefill: {shown}{record.n_new} queries (head {head})\n"
                       "over keys (causal)", fontsize=10)
    ax_a.set_ylim(n_total - 0.5, -0.5)
    fig.suptitle(f"step {record.index} ({record.kind}): {record.n_cached} positions reused, "
                 f"{record.n_new} computed (outlined)", fontsize=11)
    fig.tight_layout()
    return fig


def cache_growth_figure(series: dict):
    """Cache bytes against cached positions: measured (dots) and the formula (line), per model.

    series: label -> list of memory.GrowthRow.
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, rows in series.items():
        tokens = [row.n_tokens for row in rows]
        line, = ax.plot(tokens, [row.formula_bytes / 2 ** 10 for row in rows],
                        label=f"{label}: formula")
        ax.plot(tokens, [row.measured_bytes / 2 ** 10 for row in rows], "o",
                color=line.get_color(), markersize=4, label=f"{label}: measured")
    ax.set_xlabel("positions in the cache")
    ax.set_ylabel("KV cache (KiB)")
    ax.set_title("KV cache bytes grow linearly with the sequence")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# =============================================================================================
# Notebook 03 (benchmark): latency, totals, speedup, slopes, cost model, cache memory, pooling
# =============================================================================================

MODE_STYLES = {
    "kvlab-cache": dict(color="#1f77b4", linestyle="-"),
    "kvlab-nocache": dict(color="#d62728", linestyle="-"),
    "hf-cache": dict(color="#6baed6", linestyle="--"),
    "hf-nocache": dict(color="#fc9272", linestyle="--"),
    "floor": dict(color="#555555", linestyle=":"),
}

import io  # noqa: E402  (imports kept in this section: easy merges)

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402

from . import bench as _bench  # noqa: E402


class PlotFigure(Figure):
    """A matplotlib Figure that shows itself as a PNG in any notebook (no pyplot, no backend)."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self)


def png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def run_stamp(report) -> str:
    """The facts every benchmark plot carries: model, sizes, threads, CPU/GPU, versions."""
    machine = report.machine
    device = machine.get("device", "cpu")
    where = machine.get("gpu", device) if device.startswith("cuda") else machine.get("cpu", "")
    stopped = "  (stopped early)" if report.stopped_early else ""
    return (f"{report.model}, prompt {report.prompt_len} + {report.new_tokens} new tokens, "
            f"{report.repeats} repeats | {machine.get('threads', '?')} threads, {where} | "
            f"torch {machine.get('torch', '?')}{stopped}")


def _bench_figure(report, title: str, size=(8.0, 4.6)) -> tuple[Figure, object]:
    figure = PlotFigure(figsize=size, layout="constrained")
    ax = figure.add_subplot()
    ax.set_title(title, fontsize=11)
    figure.suptitle(run_stamp(report), fontsize=8, color="#555555", y=0.01, va="bottom")
    figure.get_layout_engine().set(h_pad=0.25)
    return figure, ax


def _timed_modes(report) -> list[dict]:
    return [entry for entry in report.results if entry["mode"] != _bench.FLOOR]


def _floor_line(ax, report) -> None:
    if report.has(_bench.FLOOR):
        floor_ms = report.result(_bench.FLOOR)["per_token_ms_median"]
        ax.axhline(floor_ms, **MODE_STYLES["floor"],
                   label=f"floor: one pass over all weights ({floor_ms:.2f} ms)")


def latency_plot(report) -> Figure:
    """Each step's time against the tokens it attends over; step 0 (the prefill) marked."""
    title = "Time of each step (median over repeats)"
    if report.has("kvlab-cache") and report.has(_bench.FLOOR):
        title += f": cached decode = {_bench.floor_ratio(report):.2f} x the floor"
    figure, ax = _bench_figure(report, title)
    for entry in _timed_modes(report):
        lengths = _bench.context_lengths(report.prompt_len, len(entry["step_ms"]))
        style = MODE_STYLES[entry["mode"]]
        ax.plot(lengths[1:], entry["step_ms"][1:], **style, label=entry["mode"])
        ax.plot(lengths[:1], entry["step_ms"][:1], "o", color=style["color"], markersize=7)
    if _timed_modes(report):
        first = _timed_modes(report)[0]
        ax.annotate(f"step 0: prefill of {report.prompt_len} prompt tokens",
                    (report.prompt_len, first["step_ms"][0]), xytext=(12, 6),
                    textcoords="offset points", fontsize=8)
    _floor_line(ax, report)
    ax.set_yscale("log")
    ax.set_xlabel("tokens attended over (prompt + tokens generated so far)")
    ax.set_ylabel("ms per step (log scale)")
    ax.legend(fontsize=8)
    return figure


def cumulative_plot(report) -> Figure:
    """Total time so far against tokens generated (the prefill included)."""
    figure, ax = _bench_figure(report, "Total time to generate n tokens")
    for entry in _timed_modes(report):
        totals = _bench.cumulative_s(entry["step_ms"])
        ax.plot(range(1, len(totals) + 1), totals, **MODE_STYLES[entry["mode"]],
                label=f"{entry['mode']}: {totals[-1]:.2f} s")
    ax.set_xlabel("tokens generated, n")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    return figure


def speedup_plot(report) -> Figure:
    """Uncached / cached time against sequence length: per step, and of the total so far."""
    figure, ax = _bench_figure(report, "Speed-up of the KV cache (uncached / cached)")
    for cached, uncached in (("kvlab-cache", "kvlab-nocache"), ("hf-cache", "hf-nocache")):
        if report.has(cached) and report.has(uncached):
            lengths, per_step, totals = _bench.speedups(report, cached, uncached)
            color = MODE_STYLES[cached]["color"]
            ax.plot(lengths, per_step, color=color, alpha=0.45, label=f"{cached}: this step")
            ax.plot(lengths, totals, color=color, linewidth=2.2,
                    label=f"{cached}: total so far ({totals[-1]:.1f}x at the end)")
    ax.axhline(1, color="#999999", linewidth=0.8)
    ax.set_xlabel("sequence length (tokens attended over)")
    ax.set_ylabel("uncached time / cached time")
    ax.legend(fontsize=8)
    return figure


def loglog_plot(report) -> Figure:
    """Total decode time against tokens on log-log axes, with the fitted slopes."""
    figure, ax = _bench_figure(report, "Total decode time (after the prefill), log-log")
    for mode, fit in _bench.slope_fits(report).items():
        n, seconds = _bench.decode_totals(report.result(mode)["step_ms"])
        style = MODE_STYLES[mode]
        ax.plot(n, seconds, **style, alpha=0.8, label=f"{mode}: slope {fit.slope:.2f}")
        fitted = [x for x in n if x >= fit.x_min]
        ax.plot(fitted, [fit(x) for x in fitted], color="black", linewidth=0.8, alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("decode steps n (log)")
    ax.set_ylabel("seconds (log)")
    ax.legend(fontsize=8, title="fitted over the last half (thin lines)", title_fontsize=8)
    return figure


def cost_model_plot(report) -> Figure:
    """Measured step times beside the cost model's (dashed), with the floor."""
    figure, ax = _bench_figure(report, "Measured (solid) vs the cost model (dashed)")
    for mode in ("kvlab-cache", "kvlab-nocache"):
        if not report.has(mode):
            continue
        measured = report.result(mode)["step_ms"]
        lengths = _bench.context_lengths(report.prompt_len, len(measured))
        color = MODE_STYLES[mode]["color"]
        ax.plot(lengths, measured, color=color, label=f"{mode} measured")
        ax.plot(lengths, _bench.predicted_ms(report, mode), color=color, linestyle="--",
                label=f"{mode} cost model")
    _floor_line(ax, report)
    rates = _bench.report_rates(report)
    ax.set_yscale("log")
    ax.set_xlabel("tokens attended over")
    ax.set_ylabel("ms per step (log scale)")
    ax.legend(fontsize=8, title_fontsize=8,
              title=f"rates measured here: {rates.bytes_per_s / 1e9:.1f} GB/s (1 row), "
                    f"{rates.flops_per_s / 1e9:.1f} GFLOP/s (64 rows)")
    return figure


def cache_memory_plot(report) -> Figure:
    """KV cache bytes against length (from the model's shapes), with what the run held."""
    if report.spec is None:
        raise ValueError("this report has no model shapes (spec): rerun the benchmark")
    figure, ax = _bench_figure(report, "KV cache memory against sequence length")
    spec = report.spec
    per_token = _bench.spec_cache_bytes(spec, 1)
    lengths = list(range(0, report.prompt_len + report.new_tokens + 1))
    ax.plot(lengths, [_bench.spec_cache_bytes(spec, n) / 1e6 for n in lengths],
            color=MODE_STYLES["kvlab-cache"]["color"],
            label=f"2 x {spec.n_layers} layers x {spec.n_kv_heads} KV heads x "
                  f"{spec.head_dim} x 4 bytes = {per_token / 1e3:.1f} kB per token")
    for entry in _timed_modes(report):
        if entry.get("cache_bytes"):
            ax.plot(entry["cache_bytes"] / per_token, entry["cache_bytes"] / 1e6, "o",
                    color=MODE_STYLES[entry["mode"]]["color"],
                    label=f"{entry['mode']} held at the end: {entry['cache_bytes'] / 1e6:.2f} MB")
    ax.set_xlabel("tokens in the cache")
    ax.set_ylabel("MB")
    ax.legend(fontsize=8, title=f"weights: {spec.matmul_params * 4 / 1e6:.0f} MB (matrices)",
              title_fontsize=8)
    return figure


def compare_plot(reports: list) -> Figure:
    """Pooled runs (several machines): per-token medians of each run, with the floor."""
    if not reports:
        raise ValueError("no runs to compare: load at least one result")
    figure = PlotFigure(figsize=(8.5, 1.2 + 0.75 * len(reports)), layout="constrained")
    ax = figure.add_subplot()
    modes = ("kvlab-cache", "kvlab-nocache", _bench.FLOOR)
    height = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        ys = [row + i * height for row in range(len(reports)) if reports[row].has(mode)]
        values = [r.result(mode)["per_token_ms_median"] for r in reports if r.has(mode)]
        ax.barh(ys, values, height=height, color=MODE_STYLES[mode]["color"], label=mode)
    labels = [f"{_bench_label(r)}\n{r.prompt_len}+{r.new_tokens} tokens" for r in reports]
    ax.set_yticks([row + height for row in range(len(reports))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.set_xlabel("ms per token, median (log scale)")
    ax.set_title("Runs compared: per-token time of each mode", fontsize=11)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def _bench_label(report) -> str:
    from .results import run_label

    return run_label(report)
