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
