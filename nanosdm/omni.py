"""
Stage `omni`: LLaMA-Omni's way (the survey's §4.1 "Parallel Generation" and §4.3; Fang et al., 2024): keep the text LLM as it
is, let it hear through a speech adapter, and let a small CTC decoder turn its hidden states into
speech units while it writes its text answer.

    user's speech -> the ASR's encoder (frozen; 30 ms frames, its top layer)
      -> speech adapter: k frames side by side (k x 30 ms), a 2-layer MLP into the LM's embeddings
    prompt = BOS  USER <context speech> EOS  ASSISTANT <context text> EOS ...  USER <question speech> EOS  ASSISTANT
      -> the text LM writes its answer, token by token (its blocks frozen, or tuned: omni_tune_lm)
      -> the hidden state of each answer token -> SpeechDecoderCTC (ctc.py): upsampled lam times,
         2 causal layers, CTC over the units + blank -> deduplicated units
      -> every Ω units, the vocoder (vocoder.py) speaks them

Training, in LLaMA-Omni's two stages on the same exchanges: (1) the adapter (and optionally the
LM's blocks) on spoken questions -> text answers, cross-entropy on the answer; (2) the speech
decoder with everything before it frozen, CTC against the units of the assistant's spoken answer.
The exchanges are SpokenWorld's training dialogues: earlier turns are the context, the user's
turns as speech, the assistant's as text (what it said), as in a half-duplex chat (omni_data.py
builds them, and every prompt).

Streaming (respond): after each new text token the decoder reruns on all answer states so far,
greedily, and the units not yet emitted go to the vocoder, which speaks whenever Ω are waiting.
The first audio therefore needs only the first few text tokens.

    model = load_model("out/tiny/omni.pt")
    feats = omni_data.encode_speech(asr, [wav])[0]                              # the frozen ear
    example = omni_data.build_example([("speech", feats)], model.config["k"])   # the prompt
    out = respond(model, example, voc, codec)         # text tokens, units, audio, timings
"""
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from nanosdm import utils
from nanosdm.corpus import spokenworld
from nanosdm.ctc import SpeechDecoderCTC
from nanosdm.omni_data import collate, make_example, spoken_exchanges, synthetic_exchanges
from nanosdm.textlm import TextLM
from nanosdm.tokenizer import EOS

# what the adapter checkpoint depends on (λ or the decoder's size can change without retraining it),
# and what only the evaluation reads
ADAPTER_KEYS = ("seed", "omni_extra_exchanges", "omni_k", "omni_adapter_hidden", "omni_tune_lm", "omni_lm_lr_mult", "omni_batch_size",
                "omni_adapter_steps", "omni_lr", "omni_warmup")
EVAL_KEYS = ("omni_omega", "omni_ckpt_interval")


# -----------------------------------------------------------------------------
# the speech adapter

class SpeechAdapter(nn.Module):
    """k consecutive encoder frames side by side (the last group zero-padded), then a 2-layer MLP
    into the LM's embedding space (LLaMA-Omni: k = 5 on Whisper's 50 Hz; here 3 on 33 Hz)."""

    def __init__(self, in_dim, out_dim, k=3, hidden=512):
        super().__init__()
        self.config = dict(in_dim=in_dim, out_dim=out_dim, k=k, hidden=hidden)
        self.k = k
        self.mlp = nn.Sequential(nn.Linear(k * in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x, lengths):
        """x [B, T, in_dim] (padded rows), lengths [B] -> ([B, ceil(T / k), out_dim], new lengths)."""
        B, T, D = x.shape
        x = F.pad(x, (0, 0, 0, -T % self.k)).reshape(B, -1, self.k * D)
        return self.mlp(x), torch.div(lengths + self.k - 1, self.k, rounding_mode="floor")


# -----------------------------------------------------------------------------
# the model: text LM + adapter + CTC speech decoder

class Omni(nn.Module):
    def __init__(self, lm_config, enc_dim, k, adapter_hidden, n_units, lam, dec_layers, dec_heads, dec_d_model):
        super().__init__()
        self.config = dict(lm_config=lm_config, enc_dim=enc_dim, k=k, adapter_hidden=adapter_hidden, n_units=n_units,
                           lam=lam, dec_layers=dec_layers, dec_heads=dec_heads, dec_d_model=dec_d_model)
        self.lm = TextLM(**lm_config)
        d = lm_config["d_model"]
        self.adapter = SpeechAdapter(enc_dim, d, k, adapter_hidden)
        self.decoder = SpeechDecoderCTC(d, n_units, lam, dec_layers, dec_heads, dec_d_model)

    @property
    def device(self):
        return self.lm.head.weight.device

    def embed(self, ids, is_speech, segments):
        """ids [B, L] with SPEECH (omni_data.py) where is_speech; segments: the speech segments'
        encoder frames in reading order (row by row, left to right) -> input embeddings [B, L, D]."""
        x = self.lm.embed(ids)
        if segments:
            lengths = torch.tensor([len(s) for s in segments], device=self.device)
            padded = nn.utils.rnn.pad_sequence([s.to(self.device) for s in segments], batch_first=True)
            a, n = self.adapter(padded, lengths)
            valid = torch.arange(a.shape[1], device=self.device)[None] < n[:, None]
            x = x.masked_scatter(is_speech[..., None], a[valid].to(x.dtype))
        return x

    def forward(self, batch):
        """-> (hidden states [B, L, D], logits [B, L, vocab])."""
        h = self.lm.transformer(self.embed(batch["ids"], batch["is_speech"], batch["segments"]))
        return h, self.lm.head(h).float()


# -----------------------------------------------------------------------------
# streaming generation: text, units and audio as they come

@torch.no_grad()
def respond(model, example, voc=None, codec=None, omega=10, max_tokens=40, t0=None, on_audio=None):
    """Greedy text answer to a prompt (build_example without answer), with the speech decoder
    streaming units after each token and the vocoder speaking every omega units (when given).
    on_audio(wav piece): called with each piece as it is spoken (a live server sends it on).
    -> dict(tokens, units, wav, first_audio_s (from t0), units_at [units emitted after each token])."""
    t0 = time.time() if t0 is None else t0
    lm = model.lm
    batch = collate([example], model.device)
    L = len(example["ids"])
    cache = lm.transformer.new_kv_cache(1, min(L + max_tokens + 1, lm.config["block_size"]), model.device)
    h = lm.transformer(model.embed(batch["ids"], batch["is_speech"], batch["segments"]), kv_cache=cache)
    logits = lm.head(h[:, -1]).float()
    tokens, states, units, waiting, wav, units_at = [], [], [], [], [], []
    first_audio = None
    state = voc.new_state(codec) if voc is not None else None
    while len(tokens) < max_tokens and cache.length < cache.max_len:
        nxt = int(logits.argmax(-1))
        if nxt == EOS:
            break
        tokens.append(nxt)
        h = lm.transformer(lm.embed(torch.tensor([[nxt]], device=model.device)), kv_cache=cache)
        logits = lm.head(h[:, -1]).float()
        states.append(h[0, -1])
        new = model.decoder.stream(torch.stack(states), len(units))
        units += new
        waiting += new
        units_at.append(len(units))
        while voc is not None and len(waiting) >= omega:
            out, state = voc.stream(torch.tensor(waiting[:omega]), state, codec)
            waiting = waiting[omega:]
            if len(out) and first_audio is None:
                first_audio = time.time() - t0
            wav.append(out)
            if on_audio is not None and len(out):
                on_audio(out)
    if voc is not None:
        out, state = voc.stream(torch.tensor(waiting, dtype=torch.long), state, codec, last=True)
        if len(out) and first_audio is None:
            first_audio = time.time() - t0
        wav.append(out)
        if on_audio is not None and len(out):
            on_audio(out)
    return dict(tokens=tokens, units=units, units_at=units_at, first_audio_s=first_audio,
                wav=torch.cat(wav).cpu() if wav else torch.zeros(0))


@torch.no_grad()
def answer_states(model, examples, batch_size=32):
    """Teacher-forced hidden states of every example's answer tokens: a list of [n, D] tensors."""
    model.eval()
    out = []
    for b in range(0, len(examples), batch_size):
        chunk = examples[b:b + batch_size]
        batch = collate(chunk, model.device)
        h, _ = model(batch)
        out += [h[j, e["answer_pos"]].float().cpu() for j, e in enumerate(chunk)]
    return out


def load_model(path, device="cpu"):
    return utils.load_model(Omni, path, device)


# -----------------------------------------------------------------------------
# the stage: (1) the adapter, (2) the speech decoder, on the same exchanges

def reply_units(cfg, units, split="train"):
    """(dialogue id, reply text) -> the deduplicated units of that complete assistant answer
    (the vocoder stage's cached units of the same turns)."""
    from nanosdm.units import dedup
    from nanosdm.vocoder import assistant_turns, unit_frames
    turns = assistant_turns(cfg["data_dir"], split)
    frames = unit_frames(units, [w for w, _ in turns], cfg, f"units_{split}_assistant")
    return {(tr["dialogue"], tr["text"]): dedup(f.long())[0] for (_, tr), f in zip(turns, frames)}


def check_lambda(lam, n_tokens, n_units):
    """Every answer must fit: lam x its text tokens >= its units (else CTC cannot emit them)."""
    worst = max(range(len(n_tokens)), key=lambda i: n_units[i] / max(n_tokens[i], 1))
    if lam * n_tokens[worst] < n_units[worst]:
        raise ValueError(f"omni_lambda={lam}: an answer of {n_tokens[worst]} text tokens has {n_units[worst]} units, "
                         f"more than lambda x tokens = {lam * n_tokens[worst]}; set --omni_lambda="
                         f"{math.ceil(n_units[worst] / n_tokens[worst])} or more")
    return n_units[worst] / n_tokens[worst]


def _resumable(path, model, train_keys, device):
    """A finished checkpoint of this very configuration: load it and return True."""
    if not os.path.exists(path):
        return False
    ckpt = utils.load_checkpoint(path, device)
    if ckpt.get("finished") and ckpt.get("train_keys") == train_keys:
        model.load_state_dict(ckpt["model"], strict=False)
        return True
    return False


def _loop(name, steps, cfg, model, opt, lr, loss_fn, path, history, extra, stop_step, train_keys, saved=""):
    """The shared training loop of both phases: warmup + cosine LR, resumable checkpoints, tqdm.
    train_keys: the configuration this phase depends on (a checkpoint of another is not resumed);
    saved: the prefix of the parameters the checkpoint holds ("" = all)."""
    device = cfg["device"]
    ckpt = None
    if os.path.exists(path):
        ckpt = utils.load_checkpoint(path, device)
        changed = utils.changed_settings(ckpt.get("train_keys", {}), train_keys)
        if changed:                                    # as utils.resume: said by name, then from scratch
            print(f"{path} is a run with other settings ({changed}): training from scratch")
        if changed or ckpt.get("finished"):
            ckpt = None
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"], strict=False)
        opt.load_state_dict(ckpt["optimizer"])
        step, history[:] = ckpt["step"], ckpt["history"]
        print(f"omni {name}: resuming from step {step}")
    utils.broadcast_module(model)                      # data parallel: every rank starts from rank 0's weights

    def save(finished=False):
        state = {key: value for key, value in model.state_dict().items() if key.startswith(saved)}
        utils.save_checkpoint(path, dict(model=state, optimizer=opt.state_dict(), config=model.config,
                                         step=step, history=history, train_keys=train_keys, finished=finished, **extra))

    gen = torch.Generator()
    pbar = tqdm(total=steps, initial=step, desc=f"omni {name}", dynamic_ncols=True)
    while step < steps and (stop_step is None or step < stop_step):
        for g in opt.param_groups:
            g["lr"] = utils.cosine_lr(step, steps, lr * g.get("lr_mult", 1.0), cfg["omni_warmup"])
        gen.manual_seed(cfg["seed"] * 1_000_003 + step)   # batches depend on the step only: resumable
        loss = loss_fn(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        utils.all_reduce_grads([p for g in opt.param_groups for p in g["params"]])
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        history.append([step, round(utils.mean_over_ranks(loss.item()), 4)])
        pbar.update(1)
        pbar.set_postfix(loss=f"{history[-1][1]:.3f}")
        if step % cfg["omni_ckpt_interval"] == 0 and step < steps:
            save()
    pbar.close()
    save(finished=step >= steps)
    utils.barrier()                                       # the other ranks read what rank 0 saved
    utils.report_replicas(model, f"omni {name}")
    return step >= steps



def adapter_groups(model, cfg):
    """Phase (1)'s trainable parameter groups: the adapter, and with omni_tune_lm the LM's blocks at
    omni_lm_lr_mult of the rate; everything else frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    groups = [dict(params=list(model.adapter.parameters()), lr_mult=1.0)]
    if cfg["omni_tune_lm"]:
        groups.append(dict(params=list(model.lm.transformer.parameters()), lr_mult=cfg["omni_lm_lr_mult"]))
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    return groups

def train(cfg, stop_step=None):
    """Stage `omni`: the adapter on spoken questions -> text answers (the LM's blocks tuned or
    not), then the CTC speech decoder with everything before it frozen. Returns training figures
    (eval/omni.py measures the model)."""
    from nanosdm.asr import ASR
    from nanosdm.tokenizer import Tokenizer
    from nanosdm.units import Units
    device, out_dir = cfg["device"], cfg["out_dir"]
    t0 = time.time()
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
    units = Units.load(os.path.join(out_dir, "units.pt"), device)
    lm_ckpt = utils.load_checkpoint(os.path.join(out_dir, "text.pt"), device)
    k, block = cfg["omni_k"], lm_ckpt["config"]["block_size"]
    model = Omni(lm_ckpt["config"], asr.config["d_model"], k, cfg["omni_adapter_hidden"], units.k, cfg["omni_lambda"],
                 cfg["omni_dec_layers"], cfg["omni_dec_heads"], cfg["omni_dec_d_model"]).to(device)
    model.lm.load_state_dict(lm_ckpt["model"])
    items = spoken_exchanges(cfg, "train", asr, tok)
    targets = reply_units(cfg, units)
    sp_ids = [d["id"] for d in spokenworld.SpeechSplit(cfg["data_dir"], "train").dialogues]
    unit_targets = [targets.get((sp_ids[it["dialogue"]], it["reply"]["text"])) for it in items]
    n_corpus = len(items)
    if cfg["omni_extra_exchanges"] > 0:
        items += synthetic_exchanges(cfg, asr, tok, cfg["omni_extra_exchanges"])
        unit_targets += [None] * (len(items) - n_corpus)   # the decoder learns from the corpus's spoken answers
    examples = [make_example(it, k, block) for it in items]
    print(f"omni: {n_corpus} spoken exchanges of the corpus + {len(items) - n_corpus} synthesized "
          f"({sum(u is not None for u in unit_targets)} with answer units), prepared in {time.time() - t0:.0f}s")
    B = cfg["omni_batch_size"]

    # (1) the adapter: the LM hears; only the answer is scored
    adapter_keys = {key: cfg[key] for key in ADAPTER_KEYS}
    decoder_keys = {key: cfg[key] for key in sorted(cfg) if (key.startswith("omni_") and key not in EVAL_KEYS) or key == "seed"}
    groups = adapter_groups(model, cfg)
    adapter_path, adapter_history = os.path.join(out_dir, "omni_adapter.pt"), []

    def adapter_loss(gen):
        rows = utils.shard(torch.randint(len(examples), (B,), generator=gen)).tolist()   # this rank's share
        batch = collate([examples[r] for r in rows], device)
        _, logits = model(batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1), ignore_index=-1)

    model.train()
    t1 = time.time()
    if not _resumable(adapter_path, model, adapter_keys, device):
        opt = torch.optim.AdamW(groups, lr=cfg["omni_lr"], betas=(0.9, 0.98), weight_decay=0.0)
        if not _loop("adapter", cfg["omni_adapter_steps"], cfg, model, opt, cfg["omni_lr"], adapter_loss,
                     adapter_path, adapter_history, {}, stop_step, adapter_keys, saved=("lm.", "adapter.")):
            return {}
    adapter_history = utils.load_checkpoint(adapter_path, device)["history"]
    adapter_seconds = time.time() - t1

    # (2) the speech decoder on the frozen model's answer states
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.decoder.parameters():
        p.requires_grad_(True)
    keep = [i for i, u in enumerate(unit_targets) if u is not None and len(examples[i]["answer_pos"])]
    states = answer_states(model, [examples[i] for i in keep])
    unit_targets = [unit_targets[i] for i in keep]
    ratio = check_lambda(cfg["omni_lambda"], [len(s) for s in states], [len(u) for u in unit_targets])
    decoder_path, decoder_history = os.path.join(out_dir, "omni.pt"), []

    def decoder_loss(gen):
        rows = utils.shard(torch.randint(len(states), (B,), generator=gen)).tolist()
        x = nn.utils.rnn.pad_sequence([states[r] for r in rows], batch_first=True).to(device)
        lengths = torch.tensor([len(states[r]) for r in rows], device=device)
        return model.decoder.loss(x, lengths, [unit_targets[r] for r in rows])

    model.train()
    t2 = time.time()
    opt = torch.optim.AdamW(model.decoder.parameters(), lr=cfg["omni_dec_lr"], betas=(0.9, 0.98), weight_decay=0.0)
    if not _resumable(decoder_path, model, decoder_keys, device):
        if not _loop("decoder", cfg["omni_decoder_steps"], cfg, model, opt, cfg["omni_dec_lr"], decoder_loss,
                     decoder_path, decoder_history, dict(units_per_token_max=ratio), stop_step, decoder_keys):
            return {}
    decoder_history = utils.load_checkpoint(decoder_path, device)["history"]
    plot_training(adapter_history, decoder_history, os.path.join(out_dir, "plots", "omni_loss.png"))
    last = lambda h: round(float(np.mean([v for _, v in h[-50:]])), 4)
    return dict(omni_train_exchanges=len(items), omni_train_exchanges_corpus=n_corpus, omni_train_answers_with_units=len(states),
                omni_adapter_train_loss=last(adapter_history), omni_decoder_train_ctc=last(decoder_history),
                omni_decoder_first_ctc=decoder_history[0][1], omni_units_per_token_max=round(ratio, 2),
                omni_adapter_seconds=round(adapter_seconds, 1), omni_decoder_seconds=round(time.time() - t2, 1),
                omni_adapter_params_m=round(sum(p.numel() for p in model.adapter.parameters()) / 1e6, 3),
                omni_decoder_params_m=round(sum(p.numel() for p in model.decoder.parameters()) / 1e6, 3))


# -----------------------------------------------------------------------------
# pictures

def plot_training(adapter_history, decoder_history, path):
    fig, axes = utils.figure(1, 2, figsize=(9, 3.5))
    for ax, history, title in ((axes[0], adapter_history, "(1) adapter: answer cross-entropy"),
                               (axes[1], decoder_history, "(2) speech decoder: CTC per unit")):
        steps, values = zip(*history)
        k = min(20, len(values))
        ax.plot(steps[k - 1:], np.convolve(values, np.ones(k) / k, mode="valid"))
        ax.set(xlabel="step", title=title)
        ax.grid(alpha=0.3)
    utils.save_figure(fig, path, dpi=100)


@torch.no_grad()
def plot_alignment(model, state, pieces, target, path):
    """The CTC decoder's posteriors over the upsampled states of one answer: a row per unit that
    occurs (blank on top), a column per position, the text token each block of lam positions
    comes from written under it, and the greedy units over their positions."""
    lam, blank = model.decoder.lam, model.decoder.blank
    lp, _ = model.decoder(state[None].to(model.device), torch.tensor([len(state)], device=model.device))
    probs = lp[0].exp().cpu()
    best = probs.argmax(-1)
    rows = [blank] + sorted(set(target.tolist()) | set(best[best != blank].tolist()))
    fig, ax = utils.figure(figsize=(min(18, 2 + 0.06 * len(probs)), 6))
    ax.imshow(probs[:, rows].T.numpy(), origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(rows)), ["blank"] + [str(u) for u in rows[1:]], fontsize=5)
    for i, piece in enumerate(pieces):
        ax.axvline(i * lam - 0.5, color="tab:blue", lw=0.6)
        ax.text(i * lam + lam / 2, len(rows) - 0.4, piece, ha="center", va="bottom", fontsize=9, color="tab:blue",
                clip_on=False)
    ax.set(xlabel=f"upsampled text states (lambda = {lam} positions per token)", ylabel="unit (blank at the bottom)")
    ax.set_title(f"CTC posteriors: {len(target)} units of the spoken answer over its {len(pieces)} text tokens", pad=18)
    utils.save_figure(fig, path)
