"""
Stage `text`: pretrain a text LM on the SpokenWorld text corpus (the survey's §4.2.1).

Most spoken dialogue models start from a pretrained text LLM (LLaMA, Qwen; Moshi's Helium is
pretrained on text first): the speech stages then have to keep its knowledge, not learn it. Here
that LLM is small and trained from scratch, so its knowledge is known exactly: every fact of the
world, asked in phrasings it never saw, with the answer word to check.

    model:   token embedding -> the shared Transformer -> linear head
    data:    every document tokenized as in tokenizer.py and concatenated into one stream;
             a batch is random windows of block_size + 1 tokens (nanoGPT)
    train:   AdamW, warmup + cosine LR, gradient accumulation, bf16 autocast, gradient clipping
    resume:  out/<preset>/text.pt holds the model, the optimizer and the step; the batch at step s
             is drawn from a generator seeded with (seed, s), so a resumed run sees exactly the
             batches an uninterrupted one would
    report:  validation loss; QA accuracy (greedy answer, cut at EOS) on seen and text-only facts
"""
import os
import re
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from nanosdm import utils
from nanosdm.corpus.spokenworld import read_jsonl
from nanosdm.tokenizer import EOS, Tokenizer
from nanosdm.transformer import Transformer, sample_logits


class TextLM(nn.Module):
    def __init__(self, vocab_size, n_layer, n_head, d_model, block_size, dropout=0.0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, d_model=d_model,
                           block_size=block_size, dropout=dropout)
        self.embed = nn.Embedding(vocab_size, d_model)
        self.transformer = Transformer(n_layer, n_head, d_model, causal=True, max_seq_len=block_size,
                                       dropout=dropout)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        # not tied to the embedding: untied (and with the higher LR below) the tiny LM learned
        # the world's facts in about half the steps
        nn.init.normal_(self.embed.weight, mean=0.0, std=0.02)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, kv_cache=None):
        """idx [B, T] -> logits [B, T, vocab] (fp32), and the mean cross-entropy if targets given."""
        h = self.transformer(self.embed(idx), kv_cache=kv_cache)
        logits = self.head(h).float()
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, stop=EOS, use_cache=True):
        """Continue every row of idx [B, T]; temperature 0 is greedy. Returns new tokens [B, n]
        (rows that reached `stop` keep emitting `stop`). Without the cache every step reruns the
        whole prefix: the slow way, kept for the benchmark."""
        B, T = idx.shape
        max_len = min(T + max_new_tokens, self.config["block_size"])
        if max_len <= T:
            raise ValueError(f"a prompt of {T} tokens leaves no room in block_size={self.config['block_size']}")
        cache = self.transformer.new_kv_cache(B, max_len, idx.device) if use_cache else None
        out, done = [], torch.zeros(B, dtype=torch.bool, device=idx.device)
        seq, step_in = idx, idx  # the first step feeds the whole prompt (the "prefill")
        for _ in range(max_len - T):
            logits = self(step_in if use_cache else seq, kv_cache=cache)[:, -1]
            nxt = sample_logits(logits, temperature, top_k)
            nxt = torch.where(done, torch.full_like(nxt, stop), nxt)
            out.append(nxt)
            done |= nxt == stop
            if done.all():
                break
            step_in = nxt[:, None]
            if not use_cache:
                seq = torch.cat([seq, step_in], 1)
        return torch.stack(out, 1)


def load_model(path, device="cpu"):
    return utils.load_model(TextLM, path, device)


# -----------------------------------------------------------------------------
# data

def tokenize_docs(tok, docs):
    """All documents as one uint16 stream (vocabularies here stay under 65536)."""
    ids = [i for turns in docs for i in tok.encode_turns(turns)]
    assert tok.vocab_size < 2**16
    return np.array(ids, dtype=np.uint16)


def get_batch(stream, batch_size, block_size, gen, device):
    starts = torch.randint(len(stream) - block_size - 1, (batch_size,), generator=gen).numpy()
    chunk = torch.from_numpy(np.stack([stream[s:s + block_size + 1] for s in starts]).astype(np.int64))
    return chunk[:, :-1].to(device), chunk[:, 1:].to(device)


@torch.no_grad()
def estimate_loss(model, stream, batch_size, block_size, n_batches, device, seed=0):
    """Mean loss on n_batches fixed windows (the same ones every time: comparable numbers)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n_batches):
        x, y = get_batch(stream, batch_size, block_size, gen, device)
        with utils.autocast(device):
            losses.append(model(x, y)[1].item())
    model.train()
    return sum(losses) / len(losses)


# -----------------------------------------------------------------------------
# QA: does the model know the facts, asked in phrasings it never saw?

def answer_in(reply, answer):
    return re.search(rf"\b{re.escape(answer)}\b", reply) is not None


@torch.no_grad()
def answer_questions(model, tok, items, device, max_new_tokens=24, batch_size=64):
    """Greedy replies to each item's question (after its context turns). Prompts of equal length
    are decoded together, so no padding is needed."""
    model.eval()
    prompts = [tok.encode_prompt(it.get("context", []) + [["user", it["question"]]]) for it in items]
    replies = [None] * len(items)
    by_len = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for group in by_len.values():
        for b in range(0, len(group), batch_size):
            rows = group[b:b + batch_size]
            idx = torch.tensor([prompts[i] for i in rows], device=device)
            new = model.generate(idx, max_new_tokens, temperature=0).tolist()
            for i, ids in zip(rows, new):
                replies[i] = tok.decode(ids[:ids.index(EOS)] if EOS in ids else ids)
    return replies


def qa_metrics(items, replies, prefix="text_qa_acc"):
    """Accuracy on seen facts, text-only facts, and per other kind (arith, memory)."""
    groups = {}
    for it, reply in zip(items, replies):
        if it["kind"] == "fact":
            name = "textonly" if it["text_only"] else "seen"
        else:
            name = it["kind"]
        groups.setdefault(name, []).append(answer_in(reply, it["answer"]))
    return {f"{prefix}_{k}": round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}


# -----------------------------------------------------------------------------
# training

def plot_losses(history, path):
    fig, ax = utils.figure(figsize=(6, 4))
    steps, losses = zip(*history["train"])
    smooth = np.convolve(losses, np.ones(10) / 10, mode="valid") if len(losses) >= 10 else losses
    ax.plot(steps[len(steps) - len(smooth):], smooth, label="train (10-step mean)")
    if history["val"]:
        ax.plot(*zip(*history["val"]), "o-", label="validation")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="text LM pretraining")
    ax.legend()
    ax.grid(alpha=0.3)
    utils.save_figure(fig, path, dpi=100)


def train(cfg, stop_step=None):
    """Pretrain (or resume) the text LM; returns the metrics for report.json. stop_step stops the
    loop there as if the run were killed (for the resume test)."""
    device, out_dir = cfg["device"], cfg["out_dir"]
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    train_stream, val_stream = [tokenize_docs(tok, [d["turns"] for d in read_jsonl(os.path.join(cfg["data_dir"], f))])
                                for f in ("text_train.jsonl", "text_val.jsonl")]
    B, T, accum = cfg["text_batch_size"], cfg["text_block_size"], cfg["text_grad_accum"]
    max_steps = cfg["text_max_steps"]
    print(f"text corpus: {len(train_stream):,} train tokens, {len(val_stream):,} val tokens, "
          f"vocab {tok.vocab_size}; {max_steps} steps of {B * T * accum:,} tokens "
          f"= {max_steps * B * T * accum / len(train_stream):.1f} epochs")

    torch.manual_seed(cfg["seed"])  # the same initial weights whatever ran before
    model = TextLM(tok.vocab_size, cfg["text_n_layer"], cfg["text_n_head"], cfg["text_d_model"], T,
                   cfg["text_dropout"]).to(device)
    # the embedding and the head learn at a higher LR (as in nanochat): each of their rows belongs
    # to one token, most of them rare, and the facts of the world live largely in those rows.
    # (The transformer has no gains or biases, so every parameter is a matrix with weight decay.)
    tables = [model.embed.weight, model.head.weight]
    groups = [dict(params=[p for p in model.transformer.parameters()], lr_mult=1.0),
              dict(params=tables, lr_mult=cfg["text_embed_lr_mult"])]
    params = list(model.parameters())
    opt = torch.optim.AdamW(groups, lr=cfg["text_lr"], betas=(0.9, 0.95), weight_decay=cfg["text_weight_decay"])
    print(f"text LM: {sum(p.numel() for p in params) / 1e6:.2f}M parameters")

    path = os.path.join(out_dir, "text.pt")
    settings = utils.run_settings(cfg, "text")   # a partial checkpoint resumes only into the same run
    ckpt = utils.resume(path, model, opt, device, max_steps, settings=settings)
    step, history = (ckpt["step"], ckpt["history"]) if ckpt else (0, {"train": [], "val": []})
    utils.broadcast_module(model)

    def save():
        utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(),
                                         config=model.config, settings=settings, step=step, history=history))

    gen = torch.Generator()
    model.train()
    t0, tokens_seen = time.time(), 0
    pbar = tqdm(total=max_steps, initial=step, desc="text", dynamic_ncols=True)
    while step < max_steps:
        if stop_step is not None and step >= stop_step:
            break
        lr = utils.cosine_lr(step, max_steps, cfg["text_lr"], cfg["text_warmup"])
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        gen.manual_seed(cfg["seed"] * 1_000_003 + step)  # batches depend on the step only: resumable
        total = 0.0
        for _ in range(accum):
            x, y = utils.shard(get_batch(train_stream, B, T, gen, device))   # this rank's share
            with utils.autocast(device):
                _, loss = model(x, y)
            (loss / accum).backward()
            total += loss.item() / accum
        utils.all_reduce_grads(model.parameters())
        total = utils.mean_over_ranks(total)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["text_grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += B * T * accum
        history["train"].append([step, round(total, 4)])
        pbar.update(1)
        pbar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_seen / (time.time() - t0):.0f}")
        if step % cfg["text_eval_interval"] == 0 or step == max_steps:
            val = estimate_loss(model, val_stream, B, T, cfg["text_eval_batches"], device)
            history["val"].append([step, round(val, 4)])
            pbar.write(f"step {step}: train loss {total:.4f}, val loss {val:.4f}")
        if step % cfg["text_ckpt_interval"] == 0 or step == max_steps:
            save()
    pbar.close()
    train_seconds = time.time() - t0
    if step < max_steps:  # stopped as if killed: nothing saved since the last checkpoint
        return {}

    utils.report_replicas(model, "text")
    plot_losses(history, os.path.join(out_dir, "plots", "text_loss.png"))
    # question answering is measured by eval/metrics.py's evaluate_text_checkpoint, on the saved checkpoint
    return {"text_val_loss": history["val"][-1][1], "text_train_loss": history["train"][-1][1],
            "text_params_m": round(sum(p.numel() for p in params) / 1e6, 3),
            "text_train_tok_per_s": round(tokens_seen / max(train_seconds, 1e-9)) if tokens_seen else 0}
