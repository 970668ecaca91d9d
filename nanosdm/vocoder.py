"""
Stage `vocoder`: speech units back to audio, the last link of LLaMA-Omni's way (the survey's §4.3).

LLaMA-Omni's CTC decoder writes deduplicated HuBERT units ("5 9 5 ..."): what was said, without how
long each sound lasts. A unit vocoder (there a HiFi-GAN with a duration predictor) puts the time
back and makes the waveform. Here the waveform maker already exists: the codec's decoder. So the
vocoder only has to turn units into the codec's latent, and the codec speaks it:

    deduplicated units [n]  --duration predictor-->  frames per unit [n]
      -> repeat each unit for its frames: units at 50 Hz, each frame also told where it is in its
         run and how long the run is (FastSpeech's length regulator)
      -> causal blocks at 50 Hz -> four frames side by side -> causal blocks at 12.5 Hz
      -> the codec's latent [frames / 4, latent_dim]  -> the codec's own decoder -> 16 kHz audio

Trained on the assistant's turns only (it only ever speaks as the assistant): the targets are the
codec's quantized latents of the real audio, by mean squared error, plus the codec's multi-scale
log-mel loss on the decoded audio (the codec's decoder is frozen and the gradient flows through
it: the latent regression alone blurs what the decoder cannot recover). The duration predictor
learns log durations from the run lengths of the real units.

Everything is causal, with explicit state (the codec's CausalBlock: each keeps its last inputs), so
the vocoder streams: feed it Ω units, out comes their audio, and the streamed audio equals the
audio of all units at once. The price of causality is that a unit's duration is guessed without
seeing the next unit.

    voc = Vocoder.load("out/tiny/vocoder.pt")
    wav = voc.synthesize(units, codec)                   # deduplicated unit ids [n] -> wav [T]
    state = voc.new_state(codec)
    out, state = voc.stream(units[:omega], state, codec) # ... and again with the next Ω units
    out, state = voc.stream(units[:0], state, codec, last=True)   # the end: pad the last frame
"""
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from nanosdm import utils
from nanosdm.corpus import spokenworld
from nanosdm.corpus.audio import SAMPLE_RATE
from nanosdm.codec import DELAY, FRAME, CausalBlock
from nanosdm.codec_losses import mel_loss
from nanosdm.units import HOP, dedup

SUB = FRAME // HOP           # unit frames (20 ms) per codec frame (80 ms): 4
MAX_RUN = 32                 # runs longer than this (640 ms: silences) share the last position embedding
FRAME_MS = 1000 * HOP / SAMPLE_RATE


# -----------------------------------------------------------------------------
# the length regulator: deduplicated units and durations <-> units at frame rate

def expand(values, durations):
    """(unit ids [n], frames per unit [n]) -> per frame: unit, place in its run, run length [3, sum]."""
    durations = durations.clamp_min(1)
    frames = values.repeat_interleave(durations)
    starts = torch.cumsum(durations, 0) - durations
    pos = torch.arange(len(frames), device=values.device) - starts.repeat_interleave(durations)
    return torch.stack([frames, pos, durations.repeat_interleave(durations)])


def frame_runs(frames):
    """Units at frame rate [T] -> the same [3, T] as expand() of their run-length collapse."""
    values, durations = dedup(frames)
    return expand(values, durations)


def duration_frames(log_duration):
    """The duration predictor's output -> whole frames, at least one."""
    return log_duration.exp().round().long().clamp(1, 4 * MAX_RUN)


# -----------------------------------------------------------------------------
# the model

class Vocoder(nn.Module):
    def __init__(self, n_units, latent_dim, dim=128, kernel=5, dur_layers=3, frame_layers=2, latent_layers=2):
        super().__init__()
        self.config = dict(n_units=n_units, latent_dim=latent_dim, dim=dim, kernel=kernel, dur_layers=dur_layers,
                           frame_layers=frame_layers, latent_layers=latent_layers)
        self.dur_embed = nn.Embedding(n_units, dim)
        self.dur_blocks = nn.ModuleList(CausalBlock(dim, kernel) for _ in range(dur_layers))
        self.dur_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))
        self.unit_embed = nn.Embedding(n_units, dim)
        self.pos_embed = nn.Embedding(MAX_RUN, dim)     # where in its run a frame is
        self.len_embed = nn.Embedding(MAX_RUN, dim)     # how long the run is
        self.frame_blocks = nn.ModuleList(CausalBlock(dim, kernel) for _ in range(frame_layers))
        self.down = nn.Linear(SUB * dim, dim)           # four 20 ms frames -> one 80 ms frame
        self.latent_blocks = nn.ModuleList(CausalBlock(dim, 3) for _ in range(latent_layers))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, latent_dim))
        self.register_buffer("latent_scale", torch.ones(()))   # the targets' std: the output's unit

    @property
    def device(self):
        return self.down.weight.device

    def _blocks(self, blocks, x, bufs):
        new = []
        for block, buf in zip(blocks, bufs):
            x, buf = block(x, buf)
            new.append(buf)
        return x, new

    def _bufs(self, blocks, batch):
        return [self.down.weight.new_zeros(batch, b.conv_weight.shape[1] - 1, b.conv_weight.shape[0]) for b in blocks]

    def durations(self, values, bufs=None):
        """values [B, n] -> (predicted log durations [B, n], new buffers). Causal over units."""
        bufs = bufs if bufs is not None else self._bufs(self.dur_blocks, values.shape[0])
        h, bufs = self._blocks(self.dur_blocks, self.dur_embed(values), bufs)
        return self.dur_head(h)[..., 0], bufs

    def latents(self, runs, state=None):
        """runs [B, 3, 4T] (expand()'s rows, whole codec frames) -> (latent [B, T, latent_dim], new state)."""
        B, _, n = runs.shape
        assert n % SUB == 0, "the frame network takes whole codec frames"
        if state is None:
            state = (self._bufs(self.frame_blocks, B), self._bufs(self.latent_blocks, B))
        x = (self.unit_embed(runs[:, 0]) + self.pos_embed(runs[:, 1].clamp(max=MAX_RUN - 1))
             + self.len_embed(runs[:, 2].clamp(max=MAX_RUN - 1)))
        x, frame_bufs = self._blocks(self.frame_blocks, x, state[0])
        x = self.down(x.reshape(B, n // SUB, -1))
        x, latent_bufs = self._blocks(self.latent_blocks, x, state[1])
        return self.out(x) * self.latent_scale, (frame_bufs, latent_bufs)

    # --- streaming, and the offline path through the very same code -------------------------------

    def new_state(self, codec):
        """Batch 1: duration and frame-network buffers, frames not yet making a codec frame, the codec decoder's state."""
        return dict(dur=self._bufs(self.dur_blocks, 1), net=None, pending=torch.zeros(3, 0, dtype=torch.long, device=self.device),
                    codec=codec.decoder_state(1), frames=0)

    @torch.no_grad()
    def stream(self, values, state, codec, last=False, durations=None):
        """Some more deduplicated units [n] -> (their audio [samples], new state). Audio comes out
        in whole codec frames; the rest waits for the next call, or with last=True the last
        partial frame is completed by holding the last unit. durations: given, not predicted."""
        values = values.to(self.device).long()
        state = dict(state)
        if len(values):
            log_d, state["dur"] = self.durations(values[None], state["dur"])
            d = durations.to(self.device).long() if durations is not None else duration_frames(log_d[0])
            state["pending"] = torch.cat([state["pending"], expand(values, d)], 1)
        pending = state["pending"]
        if last and pending.shape[1] % SUB:
            hold = pending[:, -1:].repeat(1, SUB - pending.shape[1] % SUB)
            hold[1] = pending[1, -1] + 1 + torch.arange(hold.shape[1], device=self.device)
            pending = torch.cat([pending, hold], 1)
        n = pending.shape[1] // SUB * SUB
        state["pending"] = pending[:, n:]
        if n == 0:
            return torch.zeros(0, device=self.device), state
        z, state["net"] = self.latents(pending[None, :, :n], state["net"])
        wav, state["codec"] = codec.decode_latent(z, state["codec"])
        state["frames"] += n
        return wav[0], state

    @torch.no_grad()
    def synthesize(self, values, codec, durations=None):
        """Deduplicated units [n] -> 16 kHz audio [T] (T = whole codec frames). Lags by the codec's DELAY."""
        return self.stream(values, self.new_state(codec), codec, last=True, durations=durations)[0]

    @classmethod
    def load(cls, path, device="cpu"):
        return utils.load_model(cls, path, device)


# -----------------------------------------------------------------------------
# data: the assistant's turns, their units and the codec's latents

def assistant_turns(data_dir, split, kinds=("answer",), complete=True):
    """(wav [T] float, turn) for each assistant turn of a split; complete: no interrupted turns."""
    sp = spokenworld.SpeechSplit(data_dir, split)
    return [(w, tr) for w, tr in sp.utterances("assistant", kinds=kinds)
            if not (complete and tr.get("interrupted")) and len(w) >= FRAME]


def unit_frames(units, wavs, cfg, name):
    """Units at 50 Hz of every wav, cached in out/<preset>/cache/<name>.pt (encoding every turn
    one by one is the slow part of both stages that need them). The cache is keyed by the units
    checkpoint and the wavs' lengths, so a retrained units stage or another corpus recomputes."""
    path = os.path.join(cfg["out_dir"], "cache", f"{name}.pt")
    key = [os.path.getmtime(os.path.join(cfg["out_dir"], "units.pt")), sum(len(w) for w in wavs), len(wavs)]
    if os.path.exists(path):
        ckpt = utils.load_checkpoint(path)
        if ckpt["key"] == key:
            return ckpt["units"]
    out = [units.encode(w.to(units.device)).cpu().to(torch.int16) for w in tqdm(wavs, desc=f"units of {name}", leave=False)]
    utils.save_checkpoint(path, dict(key=key, units=out))
    return out


def training_streams(wavs, frames, codec):
    """Every turn cut to whole codec frames, end to end: (units [4N], latent [N, D], wav [N * 1280])."""
    us, zs, ws = [], [], []
    for wav, u in zip(wavs, frames):
        n = len(wav) // FRAME
        wav = wav[:n * FRAME]
        u = u.long()[:n * SUB]
        u = torch.cat([u, u[-1:].repeat(n * SUB - len(u))])   # units give T // 320 frames: hold the last
        codes = codec.encode(wav[None].to(codec.window.device))
        zs.append(codec.quantizer.decode(codes)[0].cpu())
        us.append(u)
        ws.append(wav)
    return torch.cat(us), torch.cat(zs), torch.cat(ws)


def get_batch(streams, batch_size, n_frames, gen):
    """Random crops of n_frames codec frames: (runs [B, 3, 4 n], latent [B, n, D], wav [B, n * 1280],
    deduplicated units and durations as padded [B, m] with a mask)."""
    units, latent, wav = streams
    starts = torch.randint(len(latent) - n_frames + 1, (batch_size,), generator=gen).tolist()
    runs, values, durs = [], [], []
    for s in starts:
        u = units[s * SUB:(s + n_frames) * SUB]
        runs.append(frame_runs(u))
        v, d = dedup(u)
        values.append(v)
        durs.append(d)
    m = max(len(v) for v in values)
    pad = lambda xs: torch.stack([F.pad(x, (0, m - len(x))) for x in xs])
    mask = pad([torch.ones_like(v, dtype=torch.bool) for v in values])
    return (torch.stack(runs), torch.stack([latent[s:s + n_frames] for s in starts]),
            torch.stack([wav[s * FRAME:(s + n_frames) * FRAME] for s in starts]), pad(values), pad(durs), mask)


# -----------------------------------------------------------------------------
# the stage

def losses(model, codec, batch, mel_weight):
    runs, latent, wav, values, durs, mask = batch
    z, _ = model.latents(runs)
    latent_loss = F.mse_loss(z, latent) / model.latent_scale ** 2
    log_d, _ = model.durations(values)
    dur_loss = F.mse_loss(log_d[mask], durs[mask].float().log())
    mel = torch.zeros(())
    if mel_weight > 0:
        out, _ = codec.decode_latent(z, codec.decoder_state(len(z)))
        mel = mel_loss(out[:, DELAY:], wav[:, :-DELAY])     # the decoder lags by DELAY samples
    return latent_loss, dur_loss, mel


def train(cfg, stop_step=None):
    """Train (or resume) the vocoder on the assistant's training turns; returns a few training
    figures (eval/omni.py's evaluate_vocoder measures it)."""
    from nanosdm.codec import Codec
    from nanosdm.units import Units
    device, out_dir = cfg["device"], cfg["out_dir"]
    units = Units.load(os.path.join(out_dir, "units.pt"), device)
    codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
    for p in codec.parameters():
        p.requires_grad_(False)       # frozen: the vocoder learns to speak through it
    t0 = time.time()
    turns = assistant_turns(cfg["data_dir"], "train")
    wavs = [w for w, _ in turns]
    streams = training_streams(wavs, unit_frames(units, wavs, cfg, "units_train_assistant"), codec)
    hours = len(streams[2]) / SAMPLE_RATE / 3600
    print(f"vocoder: {len(turns)} assistant turns, {hours:.2f} h, prepared in {time.time() - t0:.0f}s")

    model = Vocoder(units.k, codec.config["latent_dim"], cfg["vocoder_dim"], cfg["vocoder_kernel"],
                    cfg["vocoder_dur_layers"], cfg["vocoder_frame_layers"], cfg["vocoder_latent_layers"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["vocoder_lr"], betas=(0.9, 0.98), weight_decay=0.0)
    path, max_steps = os.path.join(out_dir, "vocoder.pt"), cfg["vocoder_max_steps"]
    settings = utils.run_settings(cfg, "vocoder")   # a partial checkpoint resumes only into the same run
    ckpt = utils.resume(path, model, opt, device, max_steps, settings=settings)
    step, history = (ckpt["step"], ckpt["history"]) if ckpt else (0, {"latent": [], "duration": [], "mel": []})
    if ckpt is None:
        model.latent_scale.fill_(float(streams[1].std()))
    n_params = sum(p.numel() for p in model.parameters())
    utils.broadcast_module(model)                      # data parallel: every rank starts from rank 0's weights

    def save():
        utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(), config=model.config,
                                         settings=settings, step=step, history=history))

    gen = torch.Generator()
    model.train()
    t1 = time.time()
    pbar = tqdm(total=max_steps, initial=step, desc="vocoder", dynamic_ncols=True)
    while step < max_steps and (stop_step is None or step < stop_step):
        for g in opt.param_groups:
            g["lr"] = utils.cosine_lr(step, max_steps, cfg["vocoder_lr"], cfg["vocoder_warmup"])
        gen.manual_seed(cfg["seed"] * 1_000_003 + step)     # batches depend on the step only: resumable
        batch = [x.to(device) for x in get_batch(streams, cfg["vocoder_batch_size"], cfg["vocoder_segment_frames"], gen)]
        batch = utils.shard(batch)                          # this rank's share of the batch
        latent_loss, dur_loss, mel = losses(model, codec, batch, cfg["vocoder_mel_weight"])
        loss = latent_loss + dur_loss + cfg["vocoder_mel_weight"] * mel
        opt.zero_grad(set_to_none=True)
        loss.backward()
        utils.all_reduce_grads(model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        for key, value in (("latent", latent_loss), ("duration", dur_loss), ("mel", mel)):
            history[key].append([step, round(utils.mean_over_ranks(value.item()), 4)])
        pbar.update(1)
        pbar.set_postfix(latent=f"{latent_loss.item():.3f}", dur=f"{dur_loss.item():.3f}", mel=f"{mel.item():.2f}")
        if step % cfg["vocoder_ckpt_interval"] == 0 or step == max_steps:
            save()
    pbar.close()
    utils.report_replicas(model, "vocoder")
    if step < max_steps:
        save()
        return {}
    plot_training(history, os.path.join(out_dir, "plots", "vocoder_loss.png"))
    last = lambda key: round(float(np.mean([v for _, v in history[key][-50:]])), 4)
    return dict(vocoder_params_m=round(n_params / 1e6, 3), vocoder_train_hours=round(hours, 3),
                vocoder_train_seconds=round(time.time() - t1, 1), vocoder_train_latent_mse=last("latent"),
                vocoder_train_mel_db=last("mel"), vocoder_train_duration_mse=last("duration"))


# -----------------------------------------------------------------------------
# pictures

def plot_training(history, path):
    titles = {"latent": "latent MSE (/ target variance)", "duration": "log-duration MSE", "mel": "log-mel L1 (dB)"}
    keys = [k for k in titles if any(v for _, v in history[k])]
    fig, axes = utils.figure(1, len(keys), figsize=(4.3 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps, values = zip(*history[key])
        k = min(25, len(values))
        ax.plot(steps[k - 1:], np.convolve(values, np.ones(k) / k, mode="valid"))
        ax.set(xlabel="step", title=titles[key])
        ax.grid(alpha=0.3)
    utils.save_figure(fig, path, dpi=100)


def plot_spectrograms(pairs, path):
    """Rows of (title, original wav, vocoded wav): original above vocoded, as log-mel."""
    from nanosdm.corpus import audio
    fig, axes = utils.figure(2, len(pairs), figsize=(4.5 * len(pairs), 5.5), squeeze=False)
    for col, (title, ref, voc) in enumerate(pairs):
        for row, (wav, name) in enumerate(((ref, "original"), (voc, "vocoded from its units"))):
            ax = axes[row, col]
            ax.imshow(audio.log_mel(wav.float()).numpy(), origin="lower", aspect="auto", vmin=-80, vmax=0,
                      extent=(0, len(wav) / SAMPLE_RATE, 0, 80), cmap="magma")
            ax.set(title=f"{name}\n{title!r}" if row == 0 else name, xlabel="seconds", ylabel="mel band")
    utils.save_figure(fig, path, dpi=100)
