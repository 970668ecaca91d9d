"""The shared transformer: cached decoding equals the full pass, causality, padding masks."""
import pytest
import torch

from nanosdm.transformer import Transformer, apply_rotary, rotary_tables

torch.set_num_threads(1)


def make(causal=True, **kw):
    torch.manual_seed(0)
    return Transformer(n_layer=2, n_head=4, d_model=32, causal=causal, max_seq_len=64, **kw).eval()


def test_kv_cache_one_step_at_a_time_equals_full_pass():
    model = make()
    x = torch.randn(3, 20, 32)
    full = model(x)
    cache = model.new_kv_cache(batch_size=3)
    steps = torch.cat([model(x[:, t:t + 1], kv_cache=cache) for t in range(20)], dim=1)
    assert cache.length == 20
    assert torch.allclose(steps, full, atol=1e-5), (steps - full).abs().max()


def test_kv_cache_chunks_of_several_tokens_equal_full_pass():
    # a prompt ("prefill") then chunks of T > 1: each needs a causal mask offset by the cache length
    model = make()
    x = torch.randn(2, 24, 32)
    full = model(x)
    cache = model.new_kv_cache(batch_size=2, max_len=24)
    parts = [model(x[:, a:b], kv_cache=cache) for a, b in [(0, 7), (7, 8), (8, 13), (13, 24)]]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    cache.reset()  # a reset cache decodes a new sequence from scratch
    assert torch.allclose(model(x[:, :5], kv_cache=cache), full[:, :5], atol=1e-5)
    with pytest.raises(ValueError, match="KV cache full"):
        model(x, kv_cache=cache)


def test_causal_changing_a_future_token_never_changes_an_earlier_output():
    model = make()
    x = torch.randn(1, 16, 32)
    y = x.clone()
    y[:, 10] += 5.0
    a, b = model(x), model(y)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    # and a bidirectional model does see the future
    enc = make(causal=False)
    assert not torch.allclose(enc(x)[:, :10], enc(y)[:, :10])


def test_an_attention_window_lets_a_stream_be_encoded_piece_by_piece():
    """window W: a position sees the last W positions only (itself included). Then an output
    depends on the R = n_layer * (W - 1) inputs before it, and a piece encoded with R positions
    before it equals the full pass there."""
    W, L = 4, 2
    R = L * (W - 1)
    model = make(window=W)
    x = torch.randn(1, 30, 32)
    full = model(x)
    y = x.clone()
    y[:, 29 - R - 1] += 5.0                          # just out of the last output's reach ...
    assert torch.equal(model(y)[:, -1], full[:, -1])
    y[:, 29 - R] += 5.0                              # ... and just within it
    assert not torch.allclose(model(y)[:, -1], full[:, -1])
    piece = model(x[:, 30 - 3 - R:])                 # the last 3 outputs, from a piece
    assert torch.allclose(piece[:, -3:], full[:, -3:], atol=1e-5)
    assert torch.allclose(make()(x), make(window=64)(x), atol=1e-6)   # a window longer than x: no change


def test_padding_mask_hides_padded_frames_in_the_bidirectional_encoder():
    enc = make(causal=False)
    x = torch.randn(2, 12, 32)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 8:] = False  # the second sequence is 8 frames long, then padding
    out = enc(x, attn_mask=valid)
    alone = enc(x[1:, :8])
    assert torch.allclose(out[1, :8], alone[0], atol=1e-5)
    assert torch.allclose(out[0], enc(x[:1])[0], atol=1e-5)
    assert not out.isnan().any()
    # whatever the padded frames hold, the valid frames' outputs do not change
    x2 = x.clone()
    x2[1, 8:] = 100.0
    assert torch.allclose(enc(x2, attn_mask=valid)[1, :8], out[1, :8], atol=1e-5)


def test_return_layers_and_rotary_position_offset():
    model = make()
    x = torch.randn(1, 6, 32)
    h, layers = model(x, return_layers=True)
    assert len(layers) == 2 and all(l.shape == (1, 6, 32) for l in layers)
    # rotary embeddings encode relative positions: shifting all positions changes nothing in
    # attention scores, so a causal pass at pos=9 equals the one at pos=0
    assert torch.allclose(model(x, pos=9), h, atol=1e-5)
    # a rotation keeps the vector's norm and rotates position 0 not at all
    cos, sin = rotary_tables(8, 4)
    v = torch.randn(1, 4, 1, 1, 8)
    r = apply_rotary(v, torch.complex(cos, sin)[:, None, None])
    assert torch.allclose(r.norm(dim=-1), v.norm(dim=-1), atol=1e-5)
    assert torch.allclose(r[:, 0], v[:, 0]) and not torch.allclose(r[:, 1], v[:, 1])


def test_gradients_reach_every_parameter():
    model = make(dropout=0.1).train()
    model(torch.randn(2, 10, 32)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
