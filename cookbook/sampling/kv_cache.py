"""A key/value cache allocated once per batch and written in place, for the decode loop.

transformers' default `DynamicCache` grows by `torch.cat` at every step, so step t copies the
whole cache of every layer again: O(t) bytes a step and O(t^2) over a completion. Here each layer
gets a buffer [rows, kv_heads, capacity, head_dim] sized for the longest prompt plus
`max_new_tokens`; a step writes one column and hands attention a view of the filled columns.
When rows finish, `keep_rows` compacts the buffers to the rows still running (one copy per
finishing event, not per step), so finished rows stop costing attention and memory traffic.

It is a transformers `Cache` made of our own layers, so the model's attention calls
`cache.update(...)` on it exactly as on its own caches.
"""

from __future__ import annotations

import functools

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PreallocatedLayer(CacheLayerMixin):
    """One layer's keys and values; columns [0, length) are filled."""

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int, **kwargs) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        rows, heads, _, _ = key_states.shape
        self.keys = key_states.new_empty((rows, heads, self.capacity, key_states.shape[-1]))
        self.values = value_states.new_empty((rows, heads, self.capacity, value_states.shape[-1]))
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, stop = self.length, self.length + key_states.shape[-2]
        if stop > self.capacity:
            raise RuntimeError(f"KV cache holds {self.capacity} positions; a step asked for {stop}")
        self.keys[:, :, start:stop] = key_states
        self.values[:, :, start:stop] = value_states
        self.length = stop
        return self.keys[:, :, :stop], self.values[:, :, :stop]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            # Only the filled columns are worth copying; the rest is rewritten before it is read.
            filled = self.length
            self.keys = _compact(self.keys, indices, filled)
            self.values = _compact(self.values, indices, filled)


def _compact(buffer: torch.Tensor, rows: torch.Tensor, filled: int) -> torch.Tensor:
    out = buffer.new_empty((len(rows), *buffer.shape[1:]))
    out[:, :, :filled] = buffer[rows, :, :filled]
    return out


class PreallocatedCache(Cache):
    """A cache whose layers are `PreallocatedLayer`s of `capacity` positions, created on first use."""

    def __init__(self, capacity: int) -> None:
        super().__init__(layer_class_to_replicate=functools.partial(PreallocatedLayer, capacity))

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices into the current rows), in that order."""
        for layer in self.layers:
            layer.batch_select_indices(rows)
