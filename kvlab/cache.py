"""`KVCache`: the keys and values of every position seen so far, one pair of tensors per layer.

The tensors are allocated once, at full size, so that appending a token is a copy into place
(no reallocation while decoding). `length` says how many positions are filled; everything
past it is unused space.
"""

from __future__ import annotations

import numbers

import torch


class KVCache:
    """Preallocated per-layer keys and values, shape [batch, n_kv_heads, max_len, head_dim]."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_len: int,
                 batch: int = 1, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        for label, value in [("n_layers", n_layers), ("n_kv_heads", n_kv_heads),
                             ("head_dim", head_dim), ("max_len", max_len), ("batch", batch)]:
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"KVCache {label} must be a positive integer, got {value!r}")
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = int(max_len)
        self.length = 0  # positions filled so far (the "P" of the decoder)

    @classmethod
    def for_model(cls, lm, max_len: int, batch: int = 1) -> KVCache:
        """An empty cache shaped for a loaded model."""
        device = next(lm.model.parameters()).device
        return cls(lm.n_layers, lm.n_kv_heads, lm.head_dim, max_len, batch, lm.dtype, device)

    def append(self, layer: int, new_keys: torch.Tensor, new_values: torch.Tensor):
        """Store the new positions' keys/values of one layer; return all keys/values so far.

        new_keys, new_values: [batch, n_kv_heads, n_new, head_dim], for positions
        length .. length+n_new-1. Returns views [batch, n_kv_heads, length+n_new, head_dim].
        `length` itself moves on in `advance`, once every layer has appended.
        """
        start, end = self.length, self.length + new_keys.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {self.length} cached + {new_keys.shape[2]} new "
                             f"positions exceed its max_len of {self.max_len}")
        self.keys[layer][:, :, start:end] = new_keys
        self.values[layer][:, :, start:end] = new_values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n_new: int) -> None:
        """Count n_new more positions as cached (called once per forward pass)."""
        if self.length + n_new > self.max_len:
            raise ValueError(f"KV cache is full: cannot count {n_new} more positions after "
                             f"{self.length} of max_len {self.max_len}")
        self.length += n_new

    def reset(self) -> None:
        """Forget every position (a new prompt starts from an empty cache)."""
        self.length = 0
        for keys, values in zip(self.keys, self.values, strict=True):
            keys.zero_()
            values.zero_()

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    @property
    def element_size(self) -> int:
        return self.keys[0].element_size()

    @property
    def nbytes(self) -> int:
        """Bytes holding cached positions: 2 x layers x batch x kv_heads x head_dim x length x
        element size (the 2 is one tensor for keys, one for values)."""
        batch, n_kv_heads, _, head_dim = self.keys[0].shape
        return (2 * self.n_layers * batch * n_kv_heads * head_dim * self.length
                * self.element_size)

    @property
    def capacity_bytes(self) -> int:
        """Bytes allocated, filled or not (what `max_len` positions would need)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def __repr__(self) -> str:
        batch, n_kv_heads, _, head_dim = self.keys[0].shape
        return (f"KVCache(layers={self.n_layers}, batch={batch}, kv_heads={n_kv_heads}, "
                f"head_dim={head_dim}, length={self.length}/{self.max_len}, "
                f"nbytes={self.nbytes:,})")
