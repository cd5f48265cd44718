"""Attention maps of one text (layers x heads x queries x keys) and readable token labels.

The maps are computed once per text with kvlab's own decoder (`decoder.forward` with
`record_attention=True`); every view of the notebook only reads them. Head summaries
(entropy, weight on the first / previous / same token) are computed from the maps, so
students can find previous-token heads and attention sinks themselves.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import torch

from .decoder import apply_rope, embed, forward, norm, prepare, project, rope_tables, split_heads
from .generate import generate, prompt_to_ids

# The attention view keeps layers x heads x n x n weights in memory (float32): 512 tokens on
# a 30-layer, 9-head model is about 280 MB. Longer texts are refused with a clear message.
MAX_VIEW_TOKENS = 512

SPACE_MARK = "␣"
NEWLINE_MARK = "↵"
TAB_MARK = "⇥"
RETURN_MARK = "<CR>"
VISIBLE_MARKS = {" ": SPACE_MARK, "\n": NEWLINE_MARK, "\t": TAB_MARK, "\r": RETURN_MARK}


# ---------------------------------------------------------------------------------------------
# Readable token labels


@cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte value.

    Byte-level BPE writes every byte as a printable character (a space is 'Ġ', a newline
    'Ċ', the bytes of 'ï' are 'Ã¯'); this undoes that mapping.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            stand_ins.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, stand_ins, strict=True)}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in repr(backend.decoder)


def token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The raw text bytes one token stands for; None for special tokens such as <|endoftext|>."""
    if token_id in set(tokenizer.all_special_ids):
        return None
    piece = tokenizer.convert_ids_to_tokens(token_id)
    byte_of = _byte_level_decoder()
    if _is_byte_level(tokenizer) and all(char in byte_of for char in piece):
        return bytes(byte_of[char] for char in piece)
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):  # SentencePiece byte fallback
        return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode("utf-8")  # SentencePiece marks a space with '▁'


def readable(raw: bytes) -> str:
    """Bytes as a label: visible marks for whitespace, <0xF0>-style names for partial characters.

    A character whose UTF-8 bytes are split over several tokens (common for emoji) cannot be
    shown by any one of them, so each such byte is named instead of leaving a blank label.
    """
    parts, i = [], 0
    while i < len(raw):
        size = _utf8_length(raw[i])
        try:
            char = raw[i:i + size].decode("utf-8") if size else None
        except UnicodeDecodeError:
            char = None
        if char is None:
            parts.append(f"<0x{raw[i]:02X}>")
            i += 1
            continue
        parts.append(_visible(char))
        i += size
    return "".join(parts)


def _utf8_length(lead: int) -> int:
    """Bytes in the UTF-8 character starting with this byte; 0 for a continuation byte."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _visible(char: str) -> str:
    if char in VISIBLE_MARKS:
        return VISIBLE_MARKS[char]
    if unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn"):
        return f"<U+{ord(char):04X}>"  # invisible: control, format, odd spaces
    return char


def token_labels(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """One readable label per token (see `readable`); special tokens keep their own name."""
    labels = []
    for token_id in token_ids:
        raw = token_bytes(tokenizer, int(token_id))
        labels.append(tokenizer.convert_ids_to_tokens(int(token_id)) if raw is None
                      else readable(raw))
    return labels


# ---------------------------------------------------------------------------------------------
# One text in, token ids out, with clear errors


def text_to_ids(lm, text, max_tokens: int | None = None) -> list[int]:
    """Token ids of ONE text (or one list of ids), refusing batches, empty and too-long texts."""
    if isinstance(text, (list, tuple)) and text and all(
            isinstance(item, (str, list, tuple, torch.Tensor)) for item in text):
        raise ValueError(f"the attention view shows one text at a time, got a batch of "
                         f"{len(text)} {_kind_of(text[0])}. Pass one of them, e.g. texts[0]")
    if isinstance(text, str) and not text.strip():
        raise ValueError(f"the text is empty ({text!r}): type at least one word")
    ids = prompt_to_ids(lm, text)
    if not ids:
        raise ValueError(f"the text {text!r} gives no tokens: type at least one word")
    limit = min(lm.max_positions, max_tokens or lm.max_positions)
    if len(ids) > limit:
        why = (f"{lm.name}'s context limit" if limit == lm.max_positions else
               f"the attention view's limit (it keeps layers x heads x {limit} x {limit} "
               f"weights in memory)")
        raise ValueError(f"the text has {len(ids)} tokens, over {why} of {limit} tokens; "
                         f"shorten it to at most {limit} tokens")
    return ids


def _kind_of(item) -> str:
    return "texts" if isinstance(item, str) else "token-id lists"


# ---------------------------------------------------------------------------------------------
# The maps


@dataclass
class AttentionMaps:
    """Every head's attention weights for one text, with the tokens' labels."""

    model_name: str
    token_ids: list[int]
    labels: list[str]  # one readable label per token
    weights: torch.Tensor  # [L, H, n, n]: row = query token, column = key token; rows sum to 1
    _summaries: HeadSummaries | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def n_heads(self) -> int:
        return self.weights.shape[1]

    @property
    def n_tokens(self) -> int:
        return self.weights.shape[2]

    def head(self, layer: int, head: int) -> torch.Tensor:
        """One head's map, [n, n]; a clear error for an index the model does not have."""
        _check_index("layer", layer, self.n_layers, self.model_name)
        _check_index("head", head, self.n_heads, self.model_name)
        return self.weights[layer, head]

    def summaries(self) -> HeadSummaries:
        """Per-head summaries (computed on first use, then kept)."""
        if self._summaries is None:
            self._summaries = head_summaries(self.weights)
        return self._summaries


def _check_index(what: str, value, count: int, model_name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
        raise ValueError(f"{what} {value!r} does not exist: {model_name} has {what}s "
                         f"0..{count - 1}")


def attention_maps(lm, text, max_tokens: int = MAX_VIEW_TOKENS) -> AttentionMaps:
    """Run one text through the model once and keep every layer's and head's weights."""
    ids = text_to_ids(lm, text, max_tokens)
    out = forward(lm, ids, last_only=True, record_attention=True)
    weights = torch.stack([probs[0] for probs in out.attentions])  # [L, H, n, n]
    return AttentionMaps(lm.name, ids, token_labels(lm.tokenizer, ids), weights)


# ---------------------------------------------------------------------------------------------
# Head summaries

SUMMARY_COLUMNS = {
    "entropy": "mean entropy of a query's weights, in bits (low = focused, high = spread)",
    "first": "mean weight on the first token (high = attention sink)",
    "previous": "mean weight on the token just before the query (high = previous-token head)",
    "self": "mean weight of a query on itself",
}


@dataclass
class HeadSummaries:
    """One number per head and column, each [L, H]; averages over queries 1..n-1.

    Query 0 is left out: it can only see itself, so it says nothing about the head.
    """

    entropy: torch.Tensor
    first: torch.Tensor
    previous: torch.Tensor
    self: torch.Tensor

    def column(self, name: str) -> torch.Tensor:
        if name not in SUMMARY_COLUMNS:
            raise ValueError(f"no summary column {name!r}; columns: {', '.join(SUMMARY_COLUMNS)}")
        return getattr(self, name)

    def kind(self, layer: int, head: int) -> str:
        """A rough name for what the head does, from its largest summary weight."""
        shares = {"sink (first token)": float(self.first[layer, head]),
                  "previous token": float(self.previous[layer, head]),
                  "self": float(self.self[layer, head])}
        name, share = max(shares.items(), key=lambda item: item[1])
        return name if share >= 0.5 else "spread"

    def rows(self, sort_by: str = "previous", descending: bool = True) -> list[dict]:
        """One dict per head (layer, head, the columns, kind), sorted by one column."""
        values = self.column(sort_by).flatten()
        order = values.argsort(descending=descending, stable=True).tolist()
        n_heads = self.first.shape[1]
        rows = []
        for index in order:
            layer, head = divmod(index, n_heads)
            row = {"layer": layer, "head": head}
            row.update({name: float(self.column(name)[layer, head]) for name in SUMMARY_COLUMNS})
            row["kind"] = self.kind(layer, head)
            rows.append(row)
        return rows

    def top(self, column: str, layer: int | None = None) -> tuple[int, int]:
        """(layer, head) with the highest value of a column, in one layer or in the model."""
        values = self.column(column)
        if layer is not None:
            return layer, int(values[layer].argmax())
        layer_best, head_best = divmod(int(values.flatten().argmax()), values.shape[1])
        return layer_best, head_best


def head_summaries(weights: torch.Tensor) -> HeadSummaries:
    """Summaries of every head from maps [L, H, n, n]."""
    n = weights.shape[-1]
    queries = weights[:, :, 1:, :] if n > 1 else weights  # [L, H, q, n]
    entropy = torch.special.entr(queries).sum(-1).mean(-1) / math.log(2)  # [L, H], bits
    first = queries[..., 0].mean(-1)
    diagonal = weights.diagonal(dim1=-2, dim2=-1)  # [L, H, n]: query i on key i
    below = weights.diagonal(offset=-1, dim1=-2, dim2=-1)  # [L, H, n-1]: query i on key i-1
    self_weight = diagonal[..., 1:].mean(-1) if n > 1 else diagonal.mean(-1)
    previous = below.mean(-1) if n > 1 else torch.full_like(first, float("nan"))
    return HeadSummaries(entropy=entropy, first=first, previous=previous, self=self_weight)


# ---------------------------------------------------------------------------------------------
# Queries and keys of layer 0 (for the by-hand exercise)


def layer0_queries_keys(lm, text, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys of one layer-0 head for a text: ([n, hd], [n, hd]), RoPE applied.

    Layer 0 reads the token embeddings directly, so its queries and keys need no other layer;
    they are made with the decoder's own building blocks. With grouped-query attention, query
    head h reads key head h // (n_heads / n_kv_heads).
    """
    _check_index("head", head, lm.n_heads, lm.name)
    ids = text_to_ids(lm, text, MAX_VIEW_TOKENS)
    w = prepare(lm)
    layer = w.layers[0]
    positions = torch.arange(len(ids))
    with torch.inference_mode():
        x = norm(embed(w, torch.tensor([ids]), positions), layer.attn_norm)  # [1, n, d]
        qkv = project(x, layer.w_qkv, layer.b_qkv)  # [1, n, (H + 2K)*hd]
        q, k, _ = qkv.split([w.n_heads * w.head_dim] + [w.n_kv_heads * w.head_dim] * 2, -1)
        q = split_heads(q, w.n_heads)  # [1, H, n, hd]
        k = split_heads(k, w.n_kv_heads)  # [1, K, n, hd]
        if w.rope_inv_freq is not None:
            cos, sin = rope_tables(w, positions)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    kv_head = head // (w.n_heads // w.n_kv_heads)
    return q[0, head].clone(), k[0, kv_head].clone()


# ---------------------------------------------------------------------------------------------
# Attention of generated tokens (read from the cached decode)


@dataclass
class GeneratedAttention:
    """The attention rows of a cached decode: at step s the query is the newest token.

    Step 0's query is the prompt's last token (it predicts the first new token); step s > 0's
    query is the s-th generated token, which sees the prompt and every token made before it.
    """

    model_name: str
    prompt_ids: list[int]
    new_ids: list[int]
    labels: list[str]  # prompt tokens, then generated tokens
    rows: list[torch.Tensor]  # rows[step]: [L, H, T_step], T_step = n_prompt + step

    @property
    def n_steps(self) -> int:
        return len(self.rows)

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    def query_position(self, step: int) -> int:
        """Position of the query token of a step (the newest token when the step ran)."""
        return self.n_prompt - 1 + step

    def row(self, step: int, layer: int, head: int) -> torch.Tensor:
        """The step's query weights over all earlier tokens and itself, [n_prompt + step]."""
        _check_index("step", step, self.n_steps, self.model_name)
        _check_index("layer", layer, self.rows[0].shape[0], self.model_name)
        _check_index("head", head, self.rows[0].shape[1], self.model_name)
        return self.rows[step][layer, head]

    def matrix(self, layer: int, head: int) -> torch.Tensor:
        """All steps' rows of one head as [steps, T_last], zero right of each row's end."""
        width = self.rows[-1].shape[-1]
        out = torch.zeros(self.n_steps, width)
        for step, weights in enumerate(self.rows):
            out[step, : weights.shape[-1]] = weights[layer, head]
        return out


def generated_attention(lm, prompt, max_new_tokens: int = 10) -> GeneratedAttention:
    """Generate greedily with the KV cache and keep each step's attention row of its query."""
    prompt_ids = text_to_ids(lm, prompt, MAX_VIEW_TOKENS)
    result = generate(lm, prompt_ids, max_new_tokens, cache=True, record_attention=True)
    rows = [torch.stack([layer[:, -1] for layer in step]) for step in result.attentions]
    labels = token_labels(lm.tokenizer, result.all_ids)
    return GeneratedAttention(lm.name, result.prompt_ids, result.new_ids, labels, rows)
