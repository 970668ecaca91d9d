"""
Training the dual-stream model (dualstream.py): stage `align` (modality adaptation, survey §4.2.2:
single utterances, from the text LM) and stage `sft` (§4.2.3: the two-channel dialogues, from the
align checkpoint). Each step is one of three kinds of batch, drawn by share:

    speech      random windows of the streams (corpus/speech.py): text, K assistant, K user tokens per step
    text_only   windows of the text LM's own token stream on the text stream, every audio stream ZERO
                (Moshi keeps text batches against forgetting)
    timed       the text corpus's dialogues in the monologue's layout (speech.timed_text), audio ZERO:
                the facts reached in the layout the model speaks in

The paradigm rows (paradigms.py) train through the same loop, sft's recipe from the text LM.
"""
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from nanosdm import utils
from nanosdm.codec import FRAME_S
from nanosdm.dualstream import ZERO, DualStream, delay, load_model
from nanosdm.tokenizer import EPAD, PAD


def get_batch(streams, batch_size, length, gen, device, start_frac=0.0):
    """Random windows of `length` steps (nanoGPT): (undelayed tokens [B, length, S], which windows are
    only listened to [B] bool: windows.Listening's). A share start_frac of them opens at a dialogue's
    first frame: a window that starts anywhere teaches nothing about the start of a conversation,
    where the model has heard nothing yet."""
    if len(streams) <= length:
        raise ValueError(f"the speech streams hold {len(streams)} frames, fewer than one training window of "
                         f"{length} (dual_context): render more dialogues or lower dual_context")
    starts = torch.randint(len(streams) - length, (batch_size,), generator=gen).tolist()
    if start_frac > 0:
        opening = (torch.rand(batch_size, generator=gen) < start_frac).tolist()
        which = torch.randint(len(streams.dialogues), (batch_size,), generator=gen).tolist()
        starts = [min(streams.dialogues[w]["offset"], len(streams) - length) if o else s
                  for s, o, w in zip(starts, opening, which)]
    listen = torch.tensor([streams.listening(s) if hasattr(streams, "listening") else False for s in starts])
    return torch.from_numpy(np.stack([streams.window(s, length) for s in starts])).to(device), listen.to(device)


def listen_only(model, targets, rows):
    """targets [B, T, S] with rows [B] (bool) only listened to: there the model's own audio and its
    text's PADs are masked (INIT), so they teach what was heard (the user's words in the text
    stream) and nothing of what the model does. Trained on, align's user turns taught it to stay
    silent after a question: at a conversation's start it took the turn 2.5% of the time, not 85%."""
    if not rows.any():
        return targets
    t = targets.clone()
    own = t[rows]
    own[..., 1:1 + model.n_q] = model.init_tokens[1:1 + model.n_q]
    quiet = (own[..., 0] == PAD) | (own[..., 0] == EPAD)
    own[..., 0] = torch.where(quiet, model.init_tokens[0], own[..., 0])
    t[rows] = own
    return t


def text_batch(stream, batch_size, length, n_q, gen, device):
    """A text-only batch (Moshi keeps text batches against forgetting): windows of the text LM's
    token stream on the text stream, every audio stream ZERO. -> (inputs, targets) [B, T, S]."""
    starts = torch.randint(len(stream) - length - 1, (batch_size,), generator=gen).numpy()
    w = torch.from_numpy(np.stack([stream[s:s + length + 1] for s in starts]).astype(np.int64)).to(device)
    zeros = torch.full((batch_size, length, 2 * n_q), ZERO, dtype=torch.long, device=device)
    return torch.cat([w[:, :-1, None], zeros], 2), torch.cat([w[:, 1:, None], zeros], 2)


def timed_batch(model, timed, batch_size, length, gen, device):
    """A timed text batch from speech.timed_text's (stream, heard): windows of the monologue stream
    on the text stream, every audio stream ZERO (no audio input, no audio loss), and no text target
    where the user speaks (INIT, masked in the loss). -> (inputs, targets) [B, length, S]."""
    stream, heard = timed
    starts = torch.randint(len(stream) - length, (batch_size,), generator=gen).numpy()
    w = torch.from_numpy(np.stack([stream[s:s + length] for s in starts]).astype(np.int64)).to(device)
    h = torch.from_numpy(np.stack([heard[s:s + length] for s in starts])).to(device)
    zeros = torch.full((batch_size, length, 2 * model.n_q), ZERO, dtype=torch.long, device=device)
    inputs, targets = model.inputs_targets(torch.cat([w[..., None], zeros], 2))
    targets[..., 0] = torch.where(h, model.init_tokens[0], targets[..., 0])
    return inputs, targets


def ear_noise(x, share, n_q, gen):
    """Undelayed tokens x [B, T, S] with a share of the user's ids replaced by ids from random frames
    of the same batch (the marginal kept): a voice never heard gives noisier units, and an ear
    trained on clean ones leans on every id being right."""
    user = x[..., 1 + n_q:]
    flip = (torch.rand(user.shape, generator=gen) < share).to(x.device)
    donors = user.flatten()[torch.randint(user.numel(), user.shape, generator=gen).to(x.device)]
    return torch.cat([x[..., :1 + n_q], torch.where(flip, donors, user)], -1)


def build_model(cfg):
    """A dual-stream model for this config, started from the text LM and the codec. dual_heads and
    dual_text choose the paradigm (absent: Moshi's)."""
    from nanosdm.codec import Codec
    lm = utils.load_checkpoint(os.path.join(cfg["out_dir"], "text.pt"))
    lc = lm["config"]
    codec = Codec.load(os.path.join(cfg["out_dir"], "codec.pt"))
    if cfg["dual_context"] > lc["block_size"]:
        print(f"note: dual_context {cfg['dual_context']} > the text LM's block_size {lc['block_size']}: "
              f"positions past it are new to the pretrained blocks")
    delays = [int(d) for d in cfg["dual_delays"].split(",")] if cfg["dual_delays"] else None
    model = DualStream(lc["vocab_size"], codec.config["codebook_size"], codec.n_q, lc["n_layer"], lc["n_head"],
                       lc["d_model"], cfg["dual_context"], delays, cfg["dual_depth_layers"], cfg["dual_depth_heads"],
                       cfg["dual_depth_d_model"], cfg["dual_pad_weight"], cfg["dual_semantic_weight"],
                       cfg["dual_turn_weight"], cfg["dual_ear"], cfg["dual_ear_mlp"],
                       cfg["dual_heads"], cfg["dual_text"], cfg["dual_ear_conv"])
    model.init_from_text_lm(lm["model"])
    model.init_from_codec(codec.quantizer.embed.float().cpu(), row_norm=lm["model"]["embed.weight"].norm(dim=-1).mean())
    if cfg["dual_ear_init"] == "units":          # train.py has checked the ear is the units'
        from nanosdm.units import Units
        model.init_ear_from_units(Units.load(os.path.join(cfg["out_dir"], "units.pt")).centroids.cpu())
    return model


def plot_losses(history, path, title):
    fig, ax = utils.figure(figsize=(7, 4))
    names = sorted({k for r in history["train"] for k in r if k != "step"})
    for name in names:   # text-only batches are their own curve: a row holds one kind of batch
        rows = [r for r in history["train"] if name in r]
        k = min(20, len(rows))
        smooth = np.convolve([r[name] for r in rows], np.ones(k) / k, mode="valid")
        ax.plot([r["step"] for r in rows][k - 1:], smooth, label=name, lw=2 if name in ("text", "audio") else 1)
    ax.set(xlabel="step", ylabel="cross-entropy (nats)", title=title, yscale="log")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    utils.save_figure(fig, path, dpi=100)


def plot_layout(model, x, tok, path, title="one training window: the streams after the delays"):
    """The teaching figure: a window's tokens as the model sees them, text over K assistant and K
    user codebook rows, delays visible (the delayed rows start with INIT, drawn dark)."""
    y = delay(x[None], model.delays, model.init_tokens)[0].cpu().numpy()
    T, S, K = y.shape[0], y.shape[1], model.n_q
    grid = np.where(y[:, 1:] == model.card, -1, y[:, 1:]).T.astype(float)    # [2K, T]
    fig, (ax_t, ax_a) = utils.figure(2, 1, figsize=(max(8, T * 0.32), 2 + 0.35 * S), sharex=True,
                                     gridspec_kw=dict(height_ratios=[1, 2 * K]))
    names = {PAD: "·", EPAD: "E", ZERO: "-"}     # ZERO: a model without text
    for t in range(T):
        i = int(y[t, 0])
        piece = names.get(i) or tok.sp.id_to_piece(i).replace("\u2581", "_")
        ax_t.text(t, 0, piece, rotation=90, ha="center", va="center", fontsize=7)
    ax_t.set(ylim=(-1, 1), yticks=[0], yticklabels=["text"])
    masked = np.ma.masked_less(grid, 0)
    ax_a.imshow(masked, aspect="auto", cmap="viridis", interpolation="nearest")
    ax_a.imshow(np.ma.masked_greater_equal(grid, 0), aspect="auto", cmap="gray", interpolation="nearest")
    ax_a.set_yticks(range(2 * K), [f"assistant {k} (+{model.delays[1 + k]})" for k in range(K)]
                    + [f"{'user unit' if model.config['ear'] == 'units' else 'user'} {k} (+{model.delays[1 + K + k]})"
                       for k in range(K)], fontsize=7)
    ax_a.axhline(K - 0.5, color="white", lw=2)
    ax_a.set_xlabel("step (80 ms)")
    ax_t.set_title(title)
    utils.save_figure(fig, path)


def train(cfg, stage, stop_step=None, name=None):
    """Stage `align` (from the text LM: the align split of single utterances) or `sft` (from the
    align checkpoint: the two-channel dialogues), each with a share of text-only batches.
    name: a row of the paradigm table (paradigms.py): sft's recipe started from the text LM, with
    no align, so that every row sees the same dialogues for the same steps; out_dir/<name>.pt."""
    from nanosdm.corpus.speech import Streams, timed_text
    from nanosdm.corpus.windows import mixed_streams
    from nanosdm.corpus.spokenworld import read_jsonl
    from nanosdm.textlm import tokenize_docs
    from nanosdm.tokenizer import Tokenizer
    device, out_dir = cfg["device"], cfg["out_dir"]
    p = lambda key: cfg[f"{stage}_{key}"]
    speech_dir = os.path.join(out_dir, "speech")
    streams = mixed_streams(cfg, stage, speech_dir)   # split align or train (and the user's: realdata.py)
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    docs = [d["turns"] for d in read_jsonl(os.path.join(cfg["data_dir"], "text_train.jsonl"))]
    text_stream = tokenize_docs(tok, docs)
    # the text corpus's dialogues in the monologue's layout (speech.timed_text says why)
    timed = timed_text(docs, tok, random.Random(cfg["seed"]), cfg["dual_user_lag"]) if p("timed_frac") > 0 else None
    if timed is not None and len(timed[0]) <= cfg["dual_context"]:
        raise ValueError(f"timed text: the text corpus's dialogues make {len(timed[0])} frames, fewer than one "
                         f"training window of {cfg['dual_context']} (dual_context): lower {stage}_timed_frac to 0")

    torch.manual_seed(cfg["seed"])
    if stage == "align" or name:
        model = build_model(cfg).to(device)
    else:
        model = load_model(os.path.join(out_dir, "align.pt"), device).train()
    model.set_text_weights(cfg["dual_pad_weight"], cfg["dual_turn_weight"])
    model.train()
    text_tables = [m.weight for m in (model.text_emb, model.text_head) if m is not None]
    frozen = [*model.transformer.parameters(), *text_tables] if p("freeze") else []
    for q in frozen:
        q.requires_grad_(False)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=p("lr"), betas=(0.9, 0.95), weight_decay=0.0)
    B, T, max_steps = p("batch_size"), cfg["dual_context"], p("max_steps")
    print(f"{stage}: {utils.count_params(model) / 1e6:.2f}M parameters "
          f"({sum(q.numel() for q in params) / 1e6:.2f}M trained), {len(streams):,} frames "
          f"({len(streams) * FRAME_S / 3600:.2f} h), {max_steps} steps of {B} x {T} steps, "
          f"{p('text_frac'):.0%} text-only batches, {p('timed_frac'):.0%} timed text")
    if stage == "align":
        d = Streams(speech_dir, "train").dialogues[0]
        first = next(tr for tr in d["turns"] if tr["speaker"] == "user")
        start = d["offset"] + max(0, int(first["start"] / FRAME_S) - 2)
        plot_layout(model, torch.from_numpy(Streams(speech_dir, "train").window(start, 48)), tok,
                    os.path.join(out_dir, "plots", "stream_layout.png"))
    path = os.path.join(out_dir, f"{name or stage}.pt")
    settings = utils.run_settings(cfg, stage)   # a partial checkpoint resumes only into the same run
    ckpt = utils.resume(path, model, opt, device, max_steps, settings=settings)
    step, history = (ckpt["step"], ckpt["history"]) if ckpt else (0, {"train": []})
    utils.broadcast_module(model)                      # data parallel: every rank starts from rank 0's weights

    def save():
        utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(),
                                         config=model.config, settings=settings, step=step, history=history))

    gen = torch.Generator()
    t0 = time.time()
    pbar = tqdm(total=max_steps, initial=step, desc=name or stage, dynamic_ncols=True)
    while step < max_steps and (stop_step is None or step < stop_step):
        lr = utils.cosine_lr(step, max_steps, p("lr"), p("warmup"))
        for g in opt.param_groups:
            g["lr"] = lr
        gen.manual_seed(cfg["seed"] * 1_000_003 + step)   # the batch depends on the step: resumable
        draw = torch.rand(1, generator=gen).item()
        kind = ("text_only" if draw < p("text_frac") else "timed" if draw < p("text_frac") + p("timed_frac")
                else "speech") if model.text else "speech"    # a model without text gets the speech batch
        if kind == "text_only":
            inputs, targets = text_batch(text_stream, B, T, model.n_q, gen, device)
        elif kind == "timed":
            inputs, targets = timed_batch(model, timed, B, T, gen, device)
        else:
            x, listen = get_batch(streams, B, T, gen, device, cfg["dual_start_frac"])
            if cfg["dual_ear_noise"] > 0:
                x = ear_noise(x, cfg["dual_ear_noise"], model.n_q, gen)
            inputs, targets = model.inputs_targets(x)
            targets = listen_only(model, targets, listen)
        inputs, targets = utils.shard((inputs, targets))     # this rank's share of the batch
        with utils.autocast(device):
            _, _, losses = model(inputs, targets)
        losses["loss"].backward()
        utils.all_reduce_grads(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        row = {k: round(utils.mean_over_ranks(v.item()), 4) for k, v in losses.items() if k != "loss"}
        if "text" in row and kind != "speech":
            row[kind] = row.pop("text")
        history["train"].append(dict(step=step, **row))
        pbar.update(1)
        pbar.set_postfix(**{k: f"{v:.3f}" for k, v in row.items() if not k.startswith("audio_")})
        if step % p("ckpt_interval") == 0 or step == max_steps:
            save()
    pbar.close()
    utils.report_replicas(model, stage)
    if step < max_steps:
        return {}
    plot_losses(history, os.path.join(out_dir, "plots", f"{name or stage}_loss.png"), f"{name or 'stage ' + stage}: loss per stream")
    mean = lambda k: round(float(np.mean([r[k] for r in history["train"] if k in r][-50:])), 4)   # last 50 with it
    figures = {f"{stage}_audio_loss": mean("audio"), f"{stage}_semantic_loss": mean("audio_0"),
               f"{stage}_train_seconds": round(time.time() - t0, 1)}
    if model.text:        # a model without text has no text loss
        figures[f"{stage}_text_loss"] = mean("text")
    return figures
