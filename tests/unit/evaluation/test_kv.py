"""The batch's KV cache: appends into spare capacity equal transformers' concatenation; rows merge and leave."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, MistralConfig

from orchestrator.evaluation import kv


def filled(lengths, seed=0):
    """A one-layer DynamicCache per length: (1, 2 heads, length, 4) keys and values."""
    g = torch.Generator().manual_seed(seed)
    caches = []
    for n in lengths:
        c = DynamicCache()
        c.update(torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 2, n, 4, generator=g), 0)
        caches.append(c)
    return caches


def test_growing_layers_append_like_dynamic_ones_and_keep_earlier_views():
    ref, mine = filled([3]), filled([3])
    kv.adopt(mine[0])
    seen = []
    for step in range(40):  # past several capacity doublings
        k, v = torch.full((1, 2, 1, 4), float(step)), torch.full((1, 2, 1, 4), -float(step))
        a, b = ref[0].update(k, v, 0), mine[0].update(k, v, 0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        seen.append((b[0], a[0].clone()))
    assert mine[0].get_seq_length() == 43 and mine[0].layers[0]._kbuf.shape[-2] >= 43
    for view, then in seen:  # a view handed out earlier still holds what it held
        assert torch.equal(view, then)


def test_rows_merge_left_padded_and_leave_trimmed():
    a, b = filled([5, 3], seed=1)
    ka, kb = a.layers[0].keys.clone(), b.layers[0].keys.clone()
    kv.merge(kv.adopt(a), kv.adopt(b), 5)
    keys = a.layers[0].keys
    assert keys.shape == (2, 2, 5, 4) and torch.equal(keys[0], ka[0])
    assert torch.equal(keys[1, :, 2:], kb[0]) and not keys[1, :, :2].any()  # two zero pads on the left
    kv.select(a, torch.tensor([1]), 2)  # the long row leaves: its pad columns go too
    assert torch.equal(a.layers[0].keys[0], kb[0])
    a.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), 0)  # appends after a select
    assert a.get_seq_length() == 4 and torch.equal(a.layers[0].keys[0, :, :3], kb[0])


def test_only_full_attention_dynamic_caches_are_batched():
    cfg = MistralConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1,
                        sliding_window=4, intermediate_size=8, vocab_size=10)
    sliding = DynamicCache(config=cfg)
    assert kv.batchable(filled([2])[0]) and not kv.batchable(sliding) and not kv.batchable(((1, 2),))
    with pytest.raises(RuntimeError, match="full-attention"):
        kv.merge(sliding, sliding, 2)


def test_keys_replaced_from_outside_are_appended_to_not_lost():
    """transformers' own cache edits (batch_select_indices, crop) replace the keys: the next append sees it."""
    mine = filled([4], seed=2)[0]
    kv.merge(kv.adopt(mine), kv.adopt(filled([4], seed=3)[0]), 4)  # two rows
    ref = DynamicCache()
    ref.update(mine.layers[0].keys.clone(), mine.layers[0].values.clone(), 0)
    for c in (ref, mine):
        c.update(torch.ones(2, 2, 1, 4), torch.ones(2, 2, 1, 4), 0)  # mine: now inside spare capacity
        c.batch_select_indices(torch.tensor([1, 0]))  # same batch size, rows swapped
        c.crop(-1)
        c.update(torch.full((2, 2, 1, 4), 2.0), torch.full((2, 2, 1, 4), 2.0), 0)
    assert torch.equal(mine.layers[0].keys, ref.layers[0].keys)
    assert torch.equal(mine.layers[0].values, ref.layers[0].values)
