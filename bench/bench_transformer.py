"""
Speed of the shared transformer (nanosdm/transformer.py), in one run on one machine:

  1. training throughput (forward + backward + AdamW, tokens/s) of the text LM built on the shared
     transformer against a plain nanoGPT-style GPT of identical shape (same layers, width, heads,
     vocabulary, block; learned positions, LayerNorm, GELU MLP 4x instead of RoPE, RMSNorm, SwiGLU
     ~8/3x). The two alternate round by round, so a change in the machine's load hits both alike.
  2. decoding speed (tokens/s, batch 1, greedy) of the same text LM with the KV cache against
     recomputing the whole prefix at every step, over a context longer than the training block.

    python bench/bench_transformer.py                          # the tiny preset's text LM shape
    python bench/bench_transformer.py --preset=small --device=cuda
    python bench/bench_transformer.py --n_layer=6 --d_model=256 --block_size=256 --batch_size=16

Note the machine's load beside the figures (`uptime`): other work on the cores moves them a lot.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from nanosdm import utils  # noqa: E402
from nanosdm.textlm import TextLM  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--preset", default="tiny")
parser.add_argument("--device", default="auto")
parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 keeps torch's default")
parser.add_argument("--n_layer", type=int, default=0, help="0: the preset's text_n_layer (same for the others)")
parser.add_argument("--n_head", type=int, default=0)
parser.add_argument("--d_model", type=int, default=0)
parser.add_argument("--block_size", type=int, default=0)
parser.add_argument("--batch_size", type=int, default=0)
parser.add_argument("--vocab_size", type=int, default=0)
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--steps", type=int, default=5, help="timed training steps per model per round")
parser.add_argument("--decode_tokens", type=int, default=500, help="tokens decoded after an 8-token prompt")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
cfg = train.parse_config([f"--preset={args.preset}"])
L = args.n_layer or cfg["text_n_layer"]
H = args.n_head or cfg["text_n_head"]
D = args.d_model or cfg["text_d_model"]
T = args.block_size or cfg["text_block_size"]
B = args.batch_size or cfg["text_batch_size"]
V = args.vocab_size or cfg["tokenizer_vocab_size"]
device = utils.get_device(args.device)


class RefBlock(nn.Module):
    """nanoGPT's block: LayerNorm, fused qkv, causal SDPA, GELU MLP 4x."""

    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.fc, self.out = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x):
        Bx, Tx, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(Bx, Tx, 3, H, D // H).transpose(1, 3).unbind(2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(Bx, Tx, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class RefGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        self.blocks = nn.ModuleList(RefBlock() for _ in range(L))
        self.ln, self.head = nn.LayerNorm(D), nn.Linear(D, V, bias=False)  # untied, like TextLM

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x)).float()
        return logits, F.cross_entropy(logits.view(-1, V), targets.reshape(-1))


def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_steps(model, opt, n):
    x = torch.randint(0, V, (B, T), device=device)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        with utils.autocast(device):
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return n * B * T / (time.perf_counter() - t0)


torch.manual_seed(0)
models = {"shared (TextLM)": TextLM(V, L, H, D, T).to(device), "nanoGPT reference": RefGPT().to(device)}
opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
print(f"device {device}, {torch.get_num_threads()} threads, bf16 autocast {utils.fast_bf16(device)}; "
      f"shape: {L} layers, d {D}, {H} heads, vocab {V}, batch {B} x block {T}")
for name, m in models.items():
    print(f"  {name}: {sum(p.numel() for p in m.parameters()) / 1e6:.3f}M parameters")
speeds = {k: [] for k in models}
for name in models:  # warm up: allocator, kernel choice
    timed_steps(models[name], opts[name], 2)
for r in range(args.rounds):
    for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
        speeds[name].append(timed_steps(models[name], opts[name], args.steps))
med = {k: statistics.median(v) for k, v in speeds.items()}
for name, v in speeds.items():
    print(f"train  {name:18s} {med[name]:10.0f} tok/s  (median of {len(v)}: {', '.join(f'{s:.0f}' for s in v)})")
# the ratio within each round (both models measured back to back) is steadier than the medians'
pairs = [a / b for a, b in zip(*speeds.values())]
print(f"train  shared / reference = {statistics.median(pairs):.3f}  (median of the per-round ratios: "
      f"{', '.join(f'{p:.2f}' for p in pairs)})")

# decoding: batch 1, greedy, decode_tokens after an 8-token prompt (a model with a longer block)
n_new = args.decode_tokens
model = TextLM(V, L, H, D, n_new + 8).to(device).eval()
prompt = torch.randint(8, V, (1, 8), device=device)
rates = {}
for use_cache in (True, False):
    with torch.no_grad(), utils.autocast(device):
        model.generate(prompt, 4, temperature=0, stop=-1, use_cache=use_cache)  # warm up
        sync()
        t0 = time.perf_counter()
        out = model.generate(prompt, n_new, temperature=0, stop=-1, use_cache=use_cache)
        sync()
    rates[use_cache] = out.shape[1] / (time.perf_counter() - t0)
    print(f"decode {'KV cache' if use_cache else 'recompute prefix':18s} {rates[use_cache]:10.0f} tok/s  ({out.shape[1]} tokens)")
print(f"decode KV cache speedup = {rates[True] / rates[False]:.2f}x")
