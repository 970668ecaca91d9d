"""
The one transformer of nanosdm: embeddings in, hidden states out.

Every model in the project is this stack plus its own embeddings and heads: the text LM, the
dual-stream temporal transformer (one 80 ms step at a time, with a KV cache), the depth transformer
(a few positions per step), the HuBERT-like unit encoder and the CTC ASR encoder (causal=False,
with a padding mask), and LLaMA-Omni's CTC speech decoder.

    pre-norm blocks:  x = x + Attention(rms_norm(x));  x = x + SwiGLU(rms_norm(x))
    attention:        rotary position embeddings on q and k, F.scaled_dot_product_attention
    decoding:         an explicit KVCache of preallocated tensors; forward(x, kv_cache=cache)
                      appends x's keys and values and attends to everything cached so far

Shapes: B batch, T new positions, S key positions (cache length + T), H heads, D model width.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class KVCache:
    """Keys and values of every layer, preallocated: k, v [n_layer, B, n_head, max_len, head_dim].
    `length` counts the positions filled; the transformer advances it after each forward."""

    def __init__(self, n_layer, batch_size, n_head, head_dim, max_len, device="cpu", dtype=torch.float32):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self):
        return self.k.shape[3]

    def reset(self):
        self.length = 0  # old entries are overwritten before they are read again


def rotary_tables(head_dim, max_seq_len, base=10000.0):
    """cos and sin [max_seq_len, head_dim/2]: position p rotates channel pair i by p * base^(-2i/hd)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, rot):
    """Rotate each channel pair (x[2i], x[2i+1]) of x [..., head_dim] as a complex number times
    rot [..., head_dim/2] (complex, broadcast). One complex multiply is one kernel forward and one
    backward: on a CPU about 6x faster than the "rotate half" form with its slices and concat."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rot).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, n_head, d_model, causal, dropout, window=0):
        super().__init__()
        assert d_model % n_head == 0, "d_model must be a multiple of n_head"
        assert causal or not window, "an attention window is a causal model's (a streaming encoder's)"
        self.n_head, self.head_dim = n_head, d_model // n_head
        assert self.head_dim % 2 == 0, "rotary embeddings need an even head_dim"
        self.causal, self.dropout, self.window = causal, dropout, window
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)  # one matmul for q, k and v
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x, rot, layer_cache=None, cache_len=0, key_mask=None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = apply_rotary(q, rot), apply_rotary(k, rot)  # v is not rotated
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        if layer_cache is not None:
            # append this step's keys and values, then attend to the whole cached prefix
            cache_k, cache_v = layer_cache
            cache_k[:, :, cache_len:cache_len + T] = k
            cache_v[:, :, cache_len:cache_len + T] = v
            k = cache_k[:, :, :cache_len + T].to(q.dtype)
            v = cache_v[:, :, :cache_len + T].to(q.dtype)
        S = k.shape[2]
        dropout = self.dropout if self.training else 0.0
        windowed = self.window and S > self.window      # some key is further back than the window
        if key_mask is None and not windowed and (not self.causal or T == 1):
            # bidirectional, or one new query that may see every cached key: no mask at all
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        elif key_mask is None and not windowed and S == T:
            # a full causal pass: the fused kernel's own causal mask is the fastest path
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            # T > 1 new queries after cache_len cached keys: query i sees keys 0 .. cache_len + i
            qpos = torch.arange(cache_len, cache_len + T, device=x.device)
            kpos = torch.arange(S, device=x.device)
            allowed = (kpos[None, :] <= qpos[:, None]) if self.causal else torch.ones(T, S, dtype=torch.bool, device=x.device)
            if windowed:   # query i sees the last `window` positions only, itself included
                allowed = allowed & (kpos[None, :] > qpos[:, None] - self.window)
            allowed = allowed[None, None]  # [1, 1, T, S]
            if key_mask is not None:  # bool [B, S], True = a real (not padded) key
                # a query always sees itself, so no row is empty: an empty row gives NaN,
                # and a NaN value leaks through later layers even where its weight is 0
                allowed = (allowed & key_mask[:, None, None, :]) | (kpos[None, :] == qpos[:, None])
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    """silu(x W1) * (x W3) then W2; hidden ~ 8/3 d keeps the parameters of a 4x GELU MLP."""

    def __init__(self, d_model, mlp_ratio):
        super().__init__()
        hidden = max(64, 64 * round(mlp_ratio * d_model * 2 / 3 / 64))  # a multiple of 64: friendlier matmuls
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def rms_norm(x):
    """RMSNorm without a learned gain (as nanochat): a gain in front of a linear layer can be folded
    into that layer's weights, so it adds no expressiveness, only work (its gradient is a reduction
    over every position)."""
    return F.rms_norm(x, (x.size(-1),))


class Block(nn.Module):
    def __init__(self, n_head, d_model, causal, mlp_ratio, dropout, window=0):
        super().__init__()
        self.attn = Attention(n_head, d_model, causal, dropout, window)
        self.mlp = SwiGLU(d_model, mlp_ratio)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, rot, layer_cache, cache_len, key_mask):
        x = x + self.drop(self.attn(rms_norm(x), rot, layer_cache, cache_len, key_mask))
        return x + self.drop(self.mlp(rms_norm(x)))


class Transformer(nn.Module):
    def __init__(self, n_layer, n_head, d_model, causal=True, mlp_ratio=4, max_seq_len=2048,
                 rope_base=10000.0, dropout=0.0, window=0):
        super().__init__()
        self.n_layer, self.n_head, self.d_model = n_layer, n_head, d_model
        self.causal, self.max_seq_len, self.window = causal, max_seq_len, window
        # window > 0 (causal only): each position attends to the last `window` positions, so a
        # stream can be encoded piece by piece, each piece with n_layer * (window - 1) positions before it
        self.blocks = nn.ModuleList(Block(n_head, d_model, causal, mlp_ratio, dropout, window) for _ in range(n_layer))
        cos, sin = rotary_tables(d_model // n_head, max_seq_len, rope_base)
        # not saved in checkpoints: they are a function of the config
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init_weights)
        for block in self.blocks:
            # GPT-2: residual projections scaled down so the residual stream's variance does not
            # grow with depth
            for w in (block.attn.proj.weight, block.mlp.w2.weight):
                nn.init.normal_(w, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def new_kv_cache(self, batch_size, max_len=None, device=None, dtype=None):
        p = self.cos
        return KVCache(self.n_layer, batch_size, self.n_head, self.d_model // self.n_head,
                       max_len or self.max_seq_len, device or p.device, dtype or torch.float32)

    def forward(self, x, kv_cache=None, pos=None, attn_mask=None, return_layers=False):
        """x: embeddings [B, T, D] -> hidden states [B, T, D] after the final RMSNorm.
        kv_cache: a KVCache to read and append to (causal decoding); its length grows by T.
        pos: absolute position of x[:, 0]; defaults to the cache length (or 0 without a cache).
        attn_mask: bool [B, S] of valid (not padded) keys, S = cache length + T.
        return_layers: also return the list of every block's output (before the final norm)."""
        B, T, _ = x.shape
        cache_len = kv_cache.length if kv_cache is not None else 0
        if kv_cache is not None:
            assert self.causal, "a KV cache only makes sense for a causal transformer"
            if cache_len + T > kv_cache.max_len:
                raise ValueError(f"KV cache full: {cache_len} + {T} > {kv_cache.max_len} positions")
        pos = cache_len if pos is None else pos
        if pos + T > self.max_seq_len:
            raise ValueError(f"positions {pos}..{pos + T - 1} exceed max_seq_len={self.max_seq_len}")
        # the rotation of each position as a complex number, [T, 1, hd/2]: broadcast over heads
        rot = torch.complex(self.cos[pos:pos + T].float(), self.sin[pos:pos + T].float())[:, None, :]
        layers = []
        for i, block in enumerate(self.blocks):
            layer_cache = (kv_cache.k[i], kv_cache.v[i]) if kv_cache is not None else None
            x = block(x, rot, layer_cache, cache_len, attn_mask)
            if return_layers:
                layers.append(x)
        if kv_cache is not None:
            kv_cache.length = cache_len + T
        x = rms_norm(x)
        return (x, layers) if return_layers else x


def sample_logits(logits, temperature, top_k):
    """logits [B, V] -> ids [B]; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, -1), 1)[:, 0]
