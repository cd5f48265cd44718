"""A hand-written transformer forward pass with an explicit KV cache (GPT-2 and Llama families).

It reads the weights of a loaded Hugging Face model and recomputes what the model computes,
in plain PyTorch, one readable step at a time:

    token ids -> embeddings (+ learned positions for GPT-2)
    for each layer:
        x = x + attention(norm(x))      queries of the new tokens, keys/values of all tokens
        x = x + mlp(norm(x))
    final norm -> LM head -> logits

With a cache holding P positions, a call with n new tokens computes their queries, keys and
values only (positions P .. P+n-1), stores the new keys/values in the cache and attends over
all P+n. Without a cache, the whole sequence is recomputed from scratch (P = 0).

Shapes: B batch, n new tokens, P cached positions, T = P + n, d model width,
H query heads, K key/value heads, hd head width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cache import KVCache

# ---------------------------------------------------------------------------------------------
# Weights: references to the model's own parameters, arranged once for the forward pass.
# Every projection is stored as [in, out], so applying it is `x @ w` (+ bias). GPT-2 keeps its
# weights that way already (queries, keys and values in one matrix); Llama's [out, in] weights
# are used through transposed views. Two copies are made once: Llama's Q, K and V matrices
# joined into one [in, out] matrix like GPT-2's, and the LM head, stored [d, V]: for one token,
# a matrix-vector product over a [d, V] row-major matrix reads memory in order and is ~1.7x
# faster on CPU than over [V, d] (measured: benchmarks/matvec_layout.py).


@dataclass
class Norm:
    weight: torch.Tensor
    bias: torch.Tensor | None  # LayerNorm has one (GPT-2); RMSNorm does not (Llama)
    eps: float


@dataclass
class LayerWeights:
    attn_norm: Norm
    w_qkv: torch.Tensor  # [d, (H + 2K)*hd]: queries, keys, values side by side
    b_qkv: torch.Tensor | None
    wo: torch.Tensor  # [H*hd, d]
    bo: torch.Tensor | None
    mlp_norm: Norm
    w_up: torch.Tensor  # [d, d_ff]
    b_up: torch.Tensor | None
    w_gate: torch.Tensor | None  # [d, d_ff], Llama's gated MLP only
    w_down: torch.Tensor  # [d_ff, d]
    b_down: torch.Tensor | None


@dataclass
class Weights:
    family: str
    n_heads: int
    n_kv_heads: int
    head_dim: int
    token_embedding: torch.Tensor  # [V, d]
    position_embedding: torch.Tensor | None  # [max_positions, d], GPT-2 only
    rope_inv_freq: torch.Tensor | None  # [hd/2], Llama only
    rope_scale: float
    layers: list[LayerWeights]
    final_norm: Norm
    lm_head: torch.Tensor  # [d, V]
    max_positions: int


def prepare(lm) -> Weights:
    """Arrange the model's parameters for the forward pass (once per model; cached on `lm`)."""
    if lm.prepared is None:
        lm.prepared = _prepare_gpt2(lm) if lm.family == "gpt2" else _prepare_llama(lm)
    return lm.prepared


def _prepare_gpt2(lm) -> Weights:
    gpt = lm.model.transformer
    if lm.model.config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 activation {lm.model.config.activation_function!r} is not "
                         f"supported; kvlab implements 'gelu_new' (tanh GELU)")
    layers = []
    for block in gpt.h:
        layers.append(LayerWeights(
            attn_norm=_layer_norm(block.ln_1),
            w_qkv=block.attn.c_attn.weight, b_qkv=block.attn.c_attn.bias,  # [d, 3d], [3d]
            wo=block.attn.c_proj.weight, bo=block.attn.c_proj.bias,
            mlp_norm=_layer_norm(block.ln_2),
            w_up=block.mlp.c_fc.weight, b_up=block.mlp.c_fc.bias, w_gate=None,
            w_down=block.mlp.c_proj.weight, b_down=block.mlp.c_proj.bias,
        ))
    return Weights(
        family="gpt2", n_heads=lm.n_heads, n_kv_heads=lm.n_kv_heads, head_dim=lm.head_dim,
        token_embedding=gpt.wte.weight, position_embedding=gpt.wpe.weight,
        rope_inv_freq=None, rope_scale=1.0, layers=layers, final_norm=_layer_norm(gpt.ln_f),
        lm_head=lm.model.lm_head.weight.t().contiguous(), max_positions=lm.max_positions)


def _layer_norm(module) -> Norm:
    return Norm(module.weight, module.bias, module.eps)


def _prepare_llama(lm) -> Weights:
    llama = lm.model.model
    config = lm.model.config
    if config.hidden_act != "silu" or getattr(config, "mlp_bias", False):
        raise ValueError(f"Llama variant with hidden_act={config.hidden_act!r}, "
                         f"mlp_bias={getattr(config, 'mlp_bias', False)} is not supported; "
                         f"kvlab implements SiLU-gated MLPs without bias")

    layers = []
    for block in llama.layers:
        attn, mlp = block.self_attn, block.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        biases = [p.bias for p in projections]
        layers.append(LayerWeights(
            attn_norm=_rms_norm(block.input_layernorm),
            w_qkv=torch.cat([p.weight for p in projections]).t().contiguous(),  # a copy
            b_qkv=None if biases[0] is None else torch.cat(biases),
            wo=attn.o_proj.weight.t(), bo=attn.o_proj.bias,
            mlp_norm=_rms_norm(block.post_attention_layernorm),
            w_up=mlp.up_proj.weight.t(), b_up=None, w_gate=mlp.gate_proj.weight.t(),
            w_down=mlp.down_proj.weight.t(), b_down=None,
        ))
    rotary = llama.rotary_emb
    return Weights(
        family="llama", n_heads=lm.n_heads, n_kv_heads=lm.n_kv_heads, head_dim=lm.head_dim,
        token_embedding=llama.embed_tokens.weight, position_embedding=None,
        rope_inv_freq=rotary.inv_freq, rope_scale=float(rotary.attention_scaling),
        layers=layers, final_norm=_rms_norm(llama.norm),
        lm_head=lm.model.lm_head.weight.t().contiguous(), max_positions=lm.max_positions)


def _rms_norm(module) -> Norm:
    return Norm(module.weight, None, module.variance_epsilon)


# ---------------------------------------------------------------------------------------------
# The building blocks


def norm(x: torch.Tensor, p: Norm) -> torch.Tensor:
    """LayerNorm (with bias: GPT-2) or RMSNorm (no bias: Llama) over the last dimension."""
    if p.bias is not None:
        return F.layer_norm(x, x.shape[-1:], p.weight, p.bias, p.eps)
    return p.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + p.eps))


def project(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """A linear layer, w stored [in, out]: x [..., in] -> x @ w (+ b) [..., out]."""
    out = x @ w
    return out if b is None else out + b


def rope_tables(w: Weights, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary-embedding cos and sin for the given positions: [n, hd] each."""
    angles = positions.float()[:, None] * w.rope_inv_freq[None, :]  # [n, hd/2]
    angles = torch.cat([angles, angles], dim=-1)  # [n, hd]
    return angles.cos() * w.rope_scale, angles.sin() * w.rope_scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x[i], x[i + hd/2]) pair by its position's angle. x: [B, heads, n, hd]."""
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated_half * sin


def causal_mask(n_new: int, n_total: int, device=None) -> torch.Tensor:
    """Which keys each new query may see: [n_new, n_total] booleans, True = visible.

    The new queries are the last n_new positions, so this is the last n_new rows of the full
    lower-triangular T x T mask (aligned bottom-right): query i sees keys 0 .. P+i.
    """
    n_cached = n_total - n_new
    return torch.ones(n_new, n_total, dtype=torch.bool, device=device).tril(diagonal=n_cached)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, n, heads*hd] -> [B, heads, n, hd]"""
    batch, n, width = x.shape
    return x.view(batch, n, n_heads, width // n_heads).transpose(1, 2)


def attention(x: torch.Tensor, layer: LayerWeights, w: Weights, layer_index: int,
              cache: KVCache | None, rope: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention of the n new tokens over all T tokens. x: [B, n, d].

    Returns the output [B, n, d] and the attention probabilities [B, H, n, T].
    """
    qkv = project(x, layer.w_qkv, layer.b_qkv)  # [B, n, (H + 2K)*hd]
    q, k, v = qkv.split([w.n_heads * w.head_dim] + [w.n_kv_heads * w.head_dim] * 2, dim=-1)
    q = split_heads(q, w.n_heads)  # [B, H, n, hd]
    k = split_heads(k, w.n_kv_heads)  # [B, K, n, hd]
    v = split_heads(v, w.n_kv_heads)  # [B, K, n, hd]
    if rope is not None:  # rotate queries and keys by their positions; keys before caching
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if cache is not None:
        k, v = cache.append(layer_index, k, v)  # [B, K, T, hd]: cached positions + new ones
    if w.n_kv_heads != w.n_heads:  # grouped-query attention: query head h reads KV head
        group = w.n_heads // w.n_kv_heads  # h // group, so each KV head serves `group`
        k = k.repeat_interleave(group, dim=1)  # neighbouring query heads
        v = v.repeat_interleave(group, dim=1)  # [B, H, T, hd]
    n_new, n_total = q.shape[2], k.shape[2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(w.head_dim)  # [B, H, n, T]
    if n_new > 1:  # a single new query may see every key: no mask needed
        scores = scores.masked_fill(~causal_mask(n_new, n_total, x.device), float("-inf"))
    probs = scores.softmax(dim=-1)  # [B, H, n, T]
    out = (probs @ v).transpose(1, 2).reshape(x.shape[0], n_new, -1)  # [B, n, H*hd]
    return project(out, layer.wo, layer.bo), probs  # [B, n, d]


def mlp(x: torch.Tensor, layer: LayerWeights) -> torch.Tensor:
    """GPT-2: down(gelu(up(x))). Llama: down(silu(gate(x)) * up(x)). x: [B, n, d]."""
    up = project(x, layer.w_up, layer.b_up)  # [B, n, d_ff]
    if layer.w_gate is None:
        hidden = F.gelu(up, approximate="tanh")  # GPT-2's "gelu_new"
    else:
        hidden = F.silu(project(x, layer.w_gate, None)) * up
    return project(hidden, layer.w_down, layer.b_down)  # [B, n, d]


def embed(w: Weights, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Token embeddings, plus learned position embeddings for GPT-2. -> [B, n, d]"""
    x = w.token_embedding[token_ids]
    if w.position_embedding is not None:
        x = x + w.position_embedding[positions]
    return x


# ---------------------------------------------------------------------------------------------
# The forward pass


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # [B, n, V], or [B, 1, V] when only the last position was asked for
    attentions: list[torch.Tensor] | None  # per layer [B, H, n, T], when recorded


@torch.inference_mode()
def forward(lm, token_ids, cache: KVCache | None = None, *, last_only: bool = False,
            record_attention: bool = False,
            positions: torch.Tensor | None = None) -> ForwardOutput:
    """Run the new tokens through the model, reusing and extending `cache` if one is given.

    token_ids: [B, n] (or a list of ids for B = 1). With a cache holding P positions, the new
    tokens take positions P .. P+n-1; without one, the ids are the whole sequence.
    `positions` overrides that, only to show what goes wrong when positions are off.
    """
    w = prepare(lm)
    device = w.token_embedding.device
    token_ids = _as_batch(token_ids, w.token_embedding.shape[0], cache).to(device)
    n_cached = cache.length if cache is not None else 0
    n_new = token_ids.shape[1]
    if n_cached + n_new > w.max_positions:
        raise ValueError(f"{n_cached + n_new} positions exceed {lm.name}'s context limit of "
                         f"{w.max_positions} tokens")
    if positions is None:
        positions = torch.arange(n_cached, n_cached + n_new)  # [n]: P .. P+n-1
    positions = positions.to(device)
    rope = rope_tables(w, positions) if w.rope_inv_freq is not None else None

    x = embed(w, token_ids, positions)  # [B, n, d]
    attentions = [] if record_attention else None
    for index, layer in enumerate(w.layers):
        attn_out, probs = attention(norm(x, layer.attn_norm), layer, w, index, cache, rope)
        x = x + attn_out
        x = x + mlp(norm(x, layer.mlp_norm), layer)
        if record_attention:
            attentions.append(probs)
    if cache is not None:
        cache.advance(n_new)

    if last_only:
        x = x[:, -1:]  # [B, 1, d]: generation only needs the next token's logits
    logits = norm(x, w.final_norm) @ w.lm_head  # [B, n, V]
    return ForwardOutput(logits, attentions)


def _as_batch(token_ids, vocab_size: int, cache: KVCache | None) -> torch.Tensor:
    """Token ids as a [B, n] tensor, or a clear error."""
    ids = torch.as_tensor(token_ids)
    if ids.dim() == 1:
        ids = ids[None, :]
    if ids.dim() != 2 or ids.shape[1] == 0 or ids.is_floating_point():
        raise ValueError(f"token_ids must be a non-empty [batch, n] array of integer ids, got "
                         f"{tuple(ids.shape)} of {ids.dtype}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids must lie in 0..{vocab_size - 1}, got {ids.min()} to "
                         f"{ids.max()}")
    if cache is not None and cache.keys[0].shape[0] != ids.shape[0]:
        raise ValueError(f"a batch of {ids.shape[0]} sequences cannot use a cache made for "
                         f"batch {cache.keys[0].shape[0]}")
    return ids.long()
