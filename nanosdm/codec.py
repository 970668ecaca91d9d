"""
Stage `codec`: a small streaming neural codec with residual VQ, the nano Mimi.

Moshi hears and speaks through Mimi: 80 ms frames, a few codebooks, about 1 kbps, causal and
streaming, with codebook 0 distilled toward a self-supervised speech model so that it carries what
was said. This is the same machine at toy size, 16 kHz in and out:

    encoder:  wav -> causal STFT (40 ms windows every 20 ms, 4 per frame) -> log magnitudes of the
              4 windows of one 80 ms frame side by side -> linear -> causal ConvNeXt blocks at 12.5 Hz
              -> linear to the latent z [B, frames, latent_dim]
    RVQ:      K codebooks quantize z, then the residual, then the residual of that ...; EMA codebook
              updates, k-means initialisation, dead-code replacement, commitment loss, straight-
              through gradient on the summed output, a random number of codebooks per batch.
              Codebook 0 is distilled toward the HuBERT-like units' features (Mimi does it with WavLM,
              in a separate semantic VQ beside the acoustic RVQ; here it is simply the first level,
              as in SpeechTokenizer). Without out/<preset>/units.pt the codec trains without it.
    decoder:  linear -> causal blocks at 12.5 Hz -> linear to 4 sub-frames -> causal blocks at 50 Hz
              -> per sub-frame log magnitude and phase of a 40 ms spectrum -> inverse FFT -> overlap-add

Why a frame-rate network with an inverse-STFT head (Vocos, WavTokenizer) rather than Mimi's
transposed convolutions: every layer runs at 12.5 or 50 Hz, never at 16 kHz, so training on a CPU is
affordable and a streamed 80 ms frame is about a hundred small ops. At batch 1 those ops cost their
overhead and their weights' trip from memory, not their arithmetic: on a 2-core VM one frame took
2-3.5 ms eager and 0.8-1.5 ms under torch.compile (bench/bench_codec.py --compile), which fuses the
elementwise ops. Halving the weights (dim 192 -> 128) made the compiled frame about 2x faster.
The price is phase: the decoder invents it, so waveforms match only roughly (SI-SNR is low) while
spectrograms match well (what the log-mel distance and an ASR listen to).

Streaming: every causal conv keeps its last kernel-1 inputs as state, the STFT keeps the last 20 ms of
audio, the overlap-add keeps its half-window tail. The batch path runs the very same code from a
zero state, so both give the same numbers. The decoder's output lags the input by DELAY = 20 ms: the
last 20 ms of a frame need the first window of the next frame to finish their overlap-add.

    codec = Codec.load("out/tiny/codec.pt")
    codes = codec.encode(wav)            # [B, T] -> [B, K, frames]  (T padded up to 1280 samples)
    wav = codec.decode(codes)            # [B, k, frames] (any k <= K) -> [B, frames * 1280]
    enc, dec = codec.encoder_state(1), codec.decoder_state(1)
    codes, enc = codec.encode_step(frame, enc)    # frame [B, 1280] -> codes [B, K, 1]
    out, dec = codec.decode_step(codes, dec)      # -> [B, 1280]
    # 2-3x faster steps (same codes; needs a C++ compiler): what bench/bench_codec.py --compile times
    encode_step = torch.compile(codec.encode_step, dynamic=False, options={"cpp_wrapper": True, "freezing": True})
"""
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from nanosdm import utils
from nanosdm.codec_losses import Discriminator, discriminator_loss, generator_adv_loss, mel_loss
from nanosdm.corpus import audio, realdata
from nanosdm.kmeans import kmeans

SAMPLE_RATE = audio.SAMPLE_RATE
FRAME = 1280                      # samples per codec frame: 80 ms, 12.5 Hz
FRAME_S = FRAME / SAMPLE_RATE     # 0.08 s: the dual-stream model's step
HOP = 320                         # STFT hop: 20 ms, 4 sub-frames per frame
SUB = FRAME // HOP
N_FFT = 2 * HOP                   # 40 ms windows, half overlapping: overlap-add needs only one tail
N_BINS = N_FFT // 2 + 1
DELAY = HOP                       # decoder output lag in samples (see the docstring)
MAX_LOG_MAG = 8.0                 # exp(8) ~ 3000: caps the decoder's magnitudes early in training


def hann(n, device=None):
    return torch.hann_window(n, periodic=True, device=device)  # periodic: half-overlapped copies sum to 1


# -----------------------------------------------------------------------------
# the network

class CausalBlock(nn.Module):
    """ConvNeXt block made causal: depthwise conv over the past `kernel` steps, then a per-step MLP.
    x [B, T, C] with buf [B, kernel-1, C] (the previous steps' inputs) -> (x + f(x), new buf)."""

    def __init__(self, dim, kernel, mlp_ratio=2):
        super().__init__()
        # the depthwise conv as an explicit multiply-add over an unfolded window: for one 80 ms
        # step at batch 1 it is ten times cheaper on a CPU than conv1d's kernel
        self.conv_weight = nn.Parameter(torch.empty(dim, kernel).uniform_(-kernel ** -0.5, kernel ** -0.5))
        self.conv_bias = nn.Parameter(torch.zeros(dim))
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, mlp_ratio * dim)
        self.down = nn.Linear(mlp_ratio * dim, dim)
        nn.init.normal_(self.down.weight, std=0.02 / math.sqrt(mlp_ratio))  # start close to identity
        nn.init.zeros_(self.down.bias)

    def forward(self, x, buf):
        h = torch.cat([buf, x], 1)                                         # [B, k-1+T, C]
        new_buf = h[:, h.shape[1] - buf.shape[1]:]
        h = (h.unfold(1, self.conv_weight.shape[1], 1) * self.conv_weight).sum(-1) + self.conv_bias
        # tanh-GELU: the exact erf GELU is several times slower on CPUs without AVX-512
        return x + self.down(F.gelu(self.up(self.norm(h)), approximate="tanh")), new_buf


class ResidualVQ(nn.Module):
    """K codebooks of `size` vectors in `dim` dimensions, updated by exponential moving averages
    (not by gradients): each code moves toward the mean of the vectors assigned to it."""

    def __init__(self, n_q, size, dim, decay=0.99, dead_frac=0.1, eps=1e-5):
        super().__init__()
        self.n_q, self.size, self.dim = n_q, size, dim
        self.decay, self.dead_frac, self.eps = decay, dead_frac, eps
        self.register_buffer("embed", torch.randn(n_q, size, dim) * 0.1)
        self.register_buffer("embed_avg", self.embed.clone())       # EMA of the sum of assigned vectors
        self.register_buffer("cluster_size", torch.ones(n_q, size))  # EMA of assignments per batch
        self.register_buffer("initted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("replaced", torch.zeros(n_q, dtype=torch.long))  # dead codes revived, for logs

    def nearest(self, r, level, sq):
        """Index of the nearest code for each row of r [N, dim]: argmin of |e|^2 - 2 r.e, as one
        addmm (|r|^2 is the same for every code). sq: |e|^2 of every code, [n_q, size]."""
        return torch.addmm(sq[level], r, self.embed[level].T, alpha=-2).argmin(1)

    @torch.no_grad()
    def init_kmeans(self, z, batch_vectors, iters=20, seed=0):
        """k-means on z [N, dim] for codebook 0, on what is left over for codebook 1, and so on.
        batch_vectors: vectors per training batch, to scale the counts like the EMA's."""
        r = z.reshape(-1, self.dim).float()
        for level in range(self.n_q):
            centroids, labels = kmeans(r, self.size, iters=iters, seed=seed + level)
            counts = torch.bincount(labels, minlength=self.size).float() * batch_vectors / r.shape[0]
            self.embed[level] = centroids
            self.cluster_size[level] = counts.clamp_min(self.eps)
            self.embed_avg[level] = centroids * self.cluster_size[level, :, None]
            r = r - centroids[labels]
        self.initted.fill_(True)

    @torch.no_grad()
    def ema_update(self, level, r, idx):
        onehot = F.one_hot(idx, self.size).type_as(r)                    # [N, size]
        # data parallel: the statistics of the whole batch, summed over the ranks, so the codebooks
        # stay identical everywhere (a no-op in one process)
        counts, sums = utils.all_reduce_sum_(onehot.sum(0)), utils.all_reduce_sum_(onehot.T @ r)
        d = self.decay
        self.cluster_size[level].mul_(d).add_(counts, alpha=1 - d)
        self.embed_avg[level].mul_(d).add_(sums, alpha=1 - d)
        n = self.cluster_size[level].sum()
        smoothed = (self.cluster_size[level] + self.eps) / (n + self.size * self.eps) * n  # Laplace
        embed = self.embed_avg[level] / smoothed[:, None]
        # dead codes (used far less than an average code) jump onto random vectors of this batch,
        # so every code keeps earning its bits; torch.where keeps it free of host syncs on a GPU
        mean = self.cluster_size[level].mean()
        dead = self.cluster_size[level] < self.dead_frac * mean
        pick = utils.broadcast_(r[torch.randint(r.shape[0], (self.size,), device=r.device)])   # rank 0's choice
        self.embed[level] = torch.where(dead[:, None], pick, embed)
        self.embed_avg[level] = torch.where(dead[:, None], pick * mean, self.embed_avg[level])
        self.cluster_size[level] = torch.where(dead, mean, self.cluster_size[level])
        self.replaced[level] += dead.sum()

    def forward(self, z, n_q=None):
        """z [B, T, dim] -> (quantized with a straight-through gradient, codes [B, n_q, T],
        commitment loss, codebook 0's output with a straight-through gradient). Updates the
        codebooks when training."""
        n_q = n_q or self.n_q
        B, T, D = z.shape
        residual, total, codes, commit = z.reshape(-1, D), 0.0, [], 0.0
        sq = self.embed.square().sum(-1)                # level l's codes move only after its own search
        for level in range(n_q):
            idx = self.nearest(residual.detach(), level, sq)
            q = self.embed[level][idx]
            commit = commit + F.mse_loss(residual, q)   # q is a buffer: pulls the encoder, not the code
            if self.training:
                self.ema_update(level, residual.detach(), idx)
            if level == 0:
                first = q
            residual = residual - q
            total = total + q
            codes.append(idx.view(B, T))
        flat = z.reshape(-1, D)
        quantized = flat + (total - flat).detach()      # forward: the codes' sum; backward: identity
        first = flat + (first - flat).detach()
        return quantized.view(B, T, D), torch.stack(codes, 1), commit, first.view(B, T, D)

    def encode(self, z, n_q=None):
        residual, codes, sq = z.reshape(-1, self.dim), [], self.embed.square().sum(-1)
        for level in range(n_q or self.n_q):
            idx = self.nearest(residual, level, sq)
            residual = residual - self.embed[level][idx]
            codes.append(idx)
        return torch.stack(codes, 1).view(z.shape[0], z.shape[1], -1).transpose(1, 2)

    def decode(self, codes):
        """codes [B, k, T] with k <= K -> the sum of the first k codebooks' vectors [B, T, dim].
        One gather from all codebooks laid end to end (code c of level l sits at l * size + c),
        not k of them: a streamed frame's cost on a CPU is mostly its number of ops."""
        k = codes.shape[1]
        offsets = torch.arange(0, k * self.size, self.size, device=codes.device)[:, None]
        return self.embed[:k].reshape(-1, self.dim)[codes + offsets].sum(1)


class Codec(nn.Module):
    def __init__(self, dim=192, sub_dim=96, enc_layers=3, dec_layers=3, sub_layers=2, kernel=3,
                 latent_dim=64, n_q=4, codebook_size=256, distill_dim=0, ema_decay=0.99, dead_frac=0.1):
        super().__init__()
        self.config = dict(dim=dim, sub_dim=sub_dim, enc_layers=enc_layers, dec_layers=dec_layers,
                           sub_layers=sub_layers, kernel=kernel, latent_dim=latent_dim, n_q=n_q,
                           codebook_size=codebook_size, distill_dim=distill_dim, ema_decay=ema_decay,
                           dead_frac=dead_frac)
        # a learned filterbank: each 20 ms spectrum -> dim / 4 channels; the 4 of a frame side by side
        assert dim % SUB == 0, f"dim must be a multiple of {SUB}"
        self.enc_in = nn.Linear(N_BINS, dim // SUB)
        self.enc_blocks = nn.ModuleList(CausalBlock(dim, kernel) for _ in range(enc_layers))
        self.enc_out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, latent_dim))
        self.quantizer = ResidualVQ(n_q, codebook_size, latent_dim, ema_decay, dead_frac)
        self.dec_in = nn.Linear(latent_dim, dim)
        self.dec_blocks = nn.ModuleList(CausalBlock(dim, kernel) for _ in range(dec_layers))
        self.dec_up = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, SUB * sub_dim))
        self.sub_blocks = nn.ModuleList(CausalBlock(sub_dim, kernel) for _ in range(sub_layers))
        self.head = nn.Sequential(nn.LayerNorm(sub_dim), nn.Linear(sub_dim, 2 * N_BINS))
        # codebook 0 -> the units' feature space, only to compute the distillation loss
        self.distill = nn.Linear(latent_dim, distill_dim) if distill_dim else None
        self.register_buffer("window", hann(N_FFT), persistent=False)

    frame_rate = SAMPLE_RATE / FRAME
    delay = DELAY

    @property
    def n_q(self):
        return self.config["n_q"]

    @property
    def bitrate(self):
        """bits per second: frames/s x codebooks x bits per code (exact, from the configuration)."""
        return self.frame_rate * self.n_q * math.log2(self.config["codebook_size"])

    # --- state: explicit tensors, zeros at the start of a stream --------------------------------

    def encoder_state(self, batch_size):
        p = self.enc_in.weight
        k, d = self.config["kernel"] - 1, self.config["dim"]
        return [p.new_zeros(batch_size, N_FFT - HOP)] + [p.new_zeros(batch_size, k, d) for _ in self.enc_blocks]

    def decoder_state(self, batch_size):
        p = self.dec_in.weight
        k, d, s = self.config["kernel"] - 1, self.config["dim"], self.config["sub_dim"]
        return ([p.new_zeros(batch_size, k, d) for _ in self.dec_blocks]
                + [p.new_zeros(batch_size, k, s) for _ in self.sub_blocks] + [p.new_zeros(batch_size, HOP)])

    # --- the two halves, batch or streaming alike -------------------------------------------------

    def encode_latent(self, wav, state):
        """wav [B, T*1280] and encoder state -> (z [B, T, latent_dim], new state)."""
        B = wav.shape[0]
        x = torch.cat([state[0], wav], 1)
        new_state = [x[:, x.shape[1] - (N_FFT - HOP):]]
        frames = x.unfold(1, N_FFT, HOP) * self.window                 # [B, 4T, N_FFT], causal windows
        logmag = torch.log(torch.fft.rfft(frames).abs() + 1e-5)
        h = self.enc_in(logmag).reshape(B, -1, self.config["dim"])
        for block, buf in zip(self.enc_blocks, state[1:]):
            h, buf = block(h, buf)
            new_state.append(buf)
        return self.enc_out(h), new_state

    def decode_latent(self, z, state):
        """z [B, T, latent_dim] and decoder state -> (wav [B, T*1280], lagging the input by DELAY)."""
        B, T, _ = z.shape
        n_dec, n_sub = len(self.dec_blocks), len(self.sub_blocks)
        new_state = []
        h = self.dec_in(z)
        for block, buf in zip(self.dec_blocks, state[:n_dec]):
            h, buf = block(h, buf)
            new_state.append(buf)
        h = self.dec_up(h).reshape(B, T * SUB, -1)                      # 12.5 Hz -> 50 Hz
        for block, buf in zip(self.sub_blocks, state[n_dec:n_dec + n_sub]):
            h, buf = block(h, buf)
            new_state.append(buf)
        logmag, phase = self.head(h).float().chunk(2, -1)
        spec = torch.polar(torch.exp(logmag.clamp(max=MAX_LOG_MAG)), phase)
        frames = torch.fft.irfft(spec, n=N_FFT) * self.window           # [B, 4T, N_FFT]
        # overlap-add with half-overlap: output hop j = second half of window j-1 + first half of j
        first, second = frames[..., :HOP], frames[..., HOP:]
        out = first + torch.cat([state[-1][:, None], second[:, :-1]], 1)
        new_state.append(second[:, -1])
        return out.reshape(B, T * FRAME), new_state

    # --- training forward and the public API -------------------------------------------------------

    def forward(self, wav, n_q=None, skip_prob=0.0):
        """Training: wav [B, T*1280] -> (decoded wav, lagging by DELAY; commitment loss; codebook 0's
        output for the distillation loss). n_q: codebooks to use (0: a plain autoencoder, no
        quantization). skip_prob: fraction of the batch decoded unquantized (Mimi)."""
        B = wav.shape[0]
        z, _ = self.encode_latent(wav, self.encoder_state(B))
        if n_q == 0:
            zq, commit, first = z, z.new_zeros(()), z
        else:
            with torch.autocast(z.device.type, enabled=False):   # nearest codes and EMA sums need fp32
                zq, _, commit, first = self.quantizer(z.float(), n_q)
        if skip_prob > 0:
            skip = torch.rand(B, 1, 1, device=z.device) < skip_prob
            zq = torch.where(skip, z, zq)
        out, _ = self.decode_latent(zq, self.decoder_state(B))
        return out, commit, first

    @torch.no_grad()
    def encode(self, wav, n_q=None):
        """wav [B, T] (or [T]) -> codes [B, n_q, ceil(T / 1280)]; the end is padded with silence."""
        wav = wav.reshape(-1, wav.shape[-1]).to(self.window.device, torch.float32)
        wav = F.pad(wav, (0, -wav.shape[1] % FRAME))
        z, _ = self.encode_latent(wav, self.encoder_state(wav.shape[0]))
        return self.quantizer.encode(z, n_q)

    @torch.no_grad()
    def decode(self, codes, batch_size=32):
        """codes [B, k, frames], k <= K: the first k codebooks -> wav [B, frames * 1280]. Decoded
        batch_size rows at a time: the decoder's activations at the audio's rate are ~8x the wav
        itself (measured: 800 replies of 8 s at once held 3.4 GB beside their 0.4 GB of audio)."""
        wav = torch.zeros(0, codes.shape[-1] * FRAME, device=self.window.device)   # an empty batch: [0, T]
        for b in range(0, codes.shape[0], batch_size):
            z = self.quantizer.decode(codes[b:b + batch_size].to(self.window.device))
            part = self.decode_latent(z, self.decoder_state(z.shape[0]))[0]
            wav = part.new_empty(codes.shape[0], part.shape[1]) if b == 0 else wav
            wav[b:b + batch_size] = part
        return wav

    @torch.no_grad()
    def encode_step(self, frame, state):
        """One 80 ms frame [B, 1280] -> (codes [B, K, 1], new state)."""
        z, state = self.encode_latent(frame, state)
        return self.quantizer.encode(z), state

    @torch.no_grad()
    def decode_step(self, codes, state):
        """codes [B, k, 1] -> (80 ms of audio [B, 1280], new state)."""
        return self.decode_latent(self.quantizer.decode(codes), state)

    @classmethod
    def load(cls, path, device="cpu"):
        return utils.load_model(cls, path, device)


# -----------------------------------------------------------------------------
# semantic distillation (the mel loss and the optional discriminator: codec_losses.py)

def distill_loss(model, first, wav, teacher):
    """1 - cosine between codebook 0's output (projected) and the teacher's features pooled to
    12.5 Hz. teacher(wav [B, T]) -> [B, T // 320, D] at 50 Hz (Units.features)."""
    with torch.no_grad():
        target = teacher(wav).float()
    B, T, _ = first.shape
    t = min(T, target.shape[1] // SUB)
    target = target[:, :t * SUB].reshape(B, t, SUB, -1).mean(2)
    return 1 - F.cosine_similarity(model.distill(first[:, :t]).float(), target, dim=-1).mean()


# -----------------------------------------------------------------------------
# data: random crops around the spoken turns of both channels (so some silence comes along too)

def turn_index(split):
    """Every turn of a SpeechSplit as rows (start, length, channel, dialogue start, dialogue end) in
    samples of its memory map; nothing is read yet."""
    sample = lambda seconds: int(seconds * SAMPLE_RATE)
    return np.array([(d["offset"] + sample(tr["start"]), max(1, sample(tr["end"] - tr["start"])),
                      0 if tr["speaker"] == "assistant" else 1, d["offset"], d["offset"] + d["length"])
                     for d in split.dialogues for tr in d["turns"]], dtype=np.int64)


def get_batch(pcm, index, batch_size, length, gen):
    """batch_size crops of `length` samples; turns drawn in proportion to their length.
    index None: pcm is a realdata.Crops, which draws from the user's corpora."""
    if index is None:
        return pcm.get_batch(batch_size, length, gen)
    rows = index[torch.multinomial(torch.from_numpy(index[:, 1]).double(), batch_size, True, generator=gen).numpy()]
    u = torch.rand(batch_size, generator=gen, dtype=torch.float64).numpy()
    starts = rows[:, 0] - length // 4 + (u * (rows[:, 1] + length // 2 - length).clip(0)).astype(np.int64)
    starts = np.clip(starts, rows[:, 3], rows[:, 4] - length)
    x = np.stack([pcm[s:s + length, ch] for s, ch in zip(starts, rows[:, 2])])
    return torch.from_numpy(x.astype(np.float32) / 32768)


# -----------------------------------------------------------------------------
# the stage

def train(cfg, stop_step=None, teacher=None):
    """Train (or resume) the codec, return its training figures. stop_step stops
    early as if killed there; teacher replaces the units encoder (a function wav -> 50 Hz features)."""
    from nanosdm.corpus.spokenworld import SpeechSplit
    device, out_dir = cfg["device"], cfg["out_dir"]
    units_path = os.path.join(out_dir, "units.pt")
    if teacher is None and cfg["codec_distill_weight"] > 0 and os.path.exists(units_path):
        from nanosdm.units import Units
        teacher = Units.load(units_path, device).features
    if teacher is None:
        why = "codec_distill_weight=0" if cfg["codec_distill_weight"] <= 0 else f"no units checkpoint at {units_path}"
        print(f"codec: {why}: training without semantic distillation")
    distill_dim = teacher(torch.zeros(1, FRAME, device=device)).shape[-1] if teacher is not None else 0
    model = Codec(*(cfg[f"codec_{k}"] for k in ("dim", "sub_dim", "enc_layers", "dec_layers", "sub_layers", "kernel",
                                               "latent_dim", "n_q", "codebook_size")),
                  distill_dim, cfg["codec_ema_decay"], cfg["codec_dead_frac"]).to(device)
    adversarial = cfg["codec_adv_weight"] > 0
    disc = Discriminator().to(device) if adversarial else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["codec_lr"], betas=(0.8, 0.99), weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg["codec_lr"], betas=(0.8, 0.99)) if adversarial else None
    n_params = sum(p.numel() for p in model.parameters())
    print(f"codec: {n_params / 1e6:.2f}M parameters, {model.n_q} x {cfg['codec_codebook_size']} codes at "
          f"{model.frame_rate} Hz = {model.bitrate:g} bps" + (", adversarial" if adversarial else ""))

    if realdata.is_default(cfg):
        split = SpeechSplit(cfg["data_dir"], "train")
        pcm, index = split.pcm, turn_index(split)
    else:   # the speech_data setting's corpora, read from disk batch by batch
        pcm, index = realdata.Crops(realdata.Speech(cfg)), None
    B, frames, max_steps = cfg["codec_batch_size"], cfg["codec_segment_frames"], cfg["codec_max_steps"]

    path = os.path.join(out_dir, "codec.pt")
    extra = (("disc", disc), ("optimizer_d", opt_d)) if adversarial else ()
    settings = utils.run_settings(cfg, "codec")   # a partial checkpoint resumes only into the same run
    ckpt = utils.resume(path, model, opt, device, max_steps, extra, settings=settings)
    step, history = (ckpt["step"], ckpt["history"]) if ckpt else (0, {"mel": [], "commit": [], "distill": []})
    utils.broadcast_module(model)                      # data parallel: every rank starts from rank 0's weights
    if adversarial:
        utils.broadcast_module(disc)

    def save():
        utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(), config=model.config,
                                         settings=settings, disc=disc.state_dict() if adversarial else None,
                                         optimizer_d=opt_d.state_dict() if adversarial else None,
                                         step=step, history=history, bitrate=model.bitrate))

    gen = torch.Generator()
    model.train()
    pbar = tqdm(total=max_steps, initial=step, desc="codec", dynamic_ncols=True)
    while step < max_steps and (stop_step is None or step < stop_step):
        if step >= cfg["codec_vq_start"] and not model.quantizer.initted:
            # the codebooks start as k-means of what the briefly pretrained encoder produces
            gen.manual_seed(cfg["seed"] * 7919 + 1)
            n_batches = max(cfg["codec_init_batches"], math.ceil(2 * model.quantizer.size / (B * frames)))
            with torch.no_grad():
                pool = torch.cat([model.encode_latent(get_batch(pcm, index, B, frames * FRAME, gen).to(device),
                                                      model.encoder_state(B))[0].flatten(0, 1) for _ in range(n_batches)])
            model.quantizer.init_kmeans(pool, B * frames, seed=cfg["seed"])
            utils.broadcast_module(model.quantizer)    # data parallel: rank 0's codebooks everywhere
            pbar.write(f"step {step}: codebooks initialised by k-means on {len(pool)} latent vectors")
        lr = utils.cosine_lr(step, max_steps, cfg["codec_lr"], cfg["codec_warmup"])
        for g in opt.param_groups + (opt_d.param_groups if adversarial else []):
            g["lr"] = lr
        gen.manual_seed(cfg["seed"] * 1_000_003 + step)   # batches depend on the step only: resumable
        x = get_batch(pcm, index, B, frames * FRAME, gen).to(device)
        x = utils.shard(x)                                 # this rank's share of the batch
        n_q = model.n_q                                    # quantizer dropout: sometimes fewer codebooks
        if torch.rand((), generator=gen) < cfg["codec_quantizer_dropout"]:
            n_q = int(torch.randint(1, model.n_q + 1, (), generator=gen))
        n_q = n_q if model.quantizer.initted else 0
        with utils.autocast(device, cfg["codec_autocast"]):
            out, commit, first = model(x, n_q, cfg["codec_skip_quant"] if n_q else 0.0)
        y, ref = out[:, DELAY:].float(), x[:, :-DELAY]     # the decoder lags by DELAY samples
        mel = mel_loss(y, ref)
        distill = distill_loss(model, first, x, teacher) if teacher is not None and n_q else torch.zeros(())
        loss = mel + cfg["codec_commit_weight"] * commit + cfg["codec_distill_weight"] * distill
        if cfg["codec_wave_weight"] > 0:
            loss = loss + cfg["codec_wave_weight"] * (y - ref).abs().mean()
        gan = adversarial and step >= cfg["codec_adv_start"]
        if gan:
            # the discriminator judges one random crop per clip: its 2-D convs over full-resolution
            # spectrograms would cost more than the whole codec
            crop = min(cfg["codec_adv_frames"] * FRAME, y.shape[1])
            o = int(torch.randint(y.shape[1] - crop + 1, (), generator=gen))
            real, fake = ref[:, o:o + crop], y[:, o:o + crop]
            with utils.autocast(device, cfg["codec_autocast"]):
                adv, fm = generator_adv_loss(disc, real, fake)
            loss = loss + cfg["codec_adv_weight"] * adv + cfg["codec_fm_weight"] * fm
        loss.backward()
        utils.all_reduce_grads(model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["codec_grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gan:
            opt_d.zero_grad(set_to_none=True)   # drop what the decoder's loss left in the discriminator
            with utils.autocast(device, cfg["codec_autocast"]):
                d_loss = discriminator_loss(disc, real, fake)
            d_loss.backward()
            utils.all_reduce_grads(disc.parameters())
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        step += 1
        for key, value in (("mel", mel), ("commit", commit), ("distill", distill)):
            history[key].append([step, round(utils.mean_over_ranks(value.item()), 4)])
        pbar.update(1)
        pbar.set_postfix(mel=f"{mel.item():.2f}", commit=f"{commit.item():.3f}", distill=f"{distill.item():.3f}",
                         n_q=n_q)
        if step % cfg["codec_ckpt_interval"] == 0 or step == max_steps:
            save()
    pbar.close()
    utils.report_replicas(model, "codec")
    if step < max_steps:
        save()
        return {}
    # the stage runner then calls eval/metrics.py's evaluate_codec_checkpoint on the saved checkpoint
    metrics = dict(codec_params_m=round(n_params / 1e6, 3),
                   codec_train_mel_db=round(float(np.mean([m for _, m in history["mel"][-50:]])), 3))
    plot_training(history, os.path.join(out_dir, "plots", "codec_loss.png"))
    return metrics


# -----------------------------------------------------------------------------
# pictures

def _row(n, size):
    """n panels side by side, each of size (width, height) inches."""
    fig, axes = utils.figure(1, n, figsize=(size[0] * n, size[1]), squeeze=False)
    return fig, axes[0]


def plot_spectrograms(wavs, titles, path):
    fig, axes = _row(len(wavs), (4.5, 3.2))
    for ax, wav, title in zip(axes, wavs, titles):
        ax.imshow(audio.log_mel(wav).numpy(), origin="lower", aspect="auto", vmin=-80, vmax=0,
                  extent=(0, len(wav) / SAMPLE_RATE, 0, 80), cmap="magma")
        ax.set(title=title, xlabel="seconds", ylabel="mel band")
    utils.save_figure(fig, path, dpi=100)


def plot_usage(counts, path):
    """Each codebook's codes sorted by how often they occur: the flatter, the more bits it uses."""
    fig, axes = _row(counts.shape[0], (2.6, 2.6))
    for k, ax in enumerate(axes):
        ax.bar(np.arange(counts.shape[1]), counts[k].sort(descending=True).values.numpy(), width=1.0)
        ax.set(title=f"codebook {k}", xlabel="code (sorted)", ylabel="count", yscale="log")
    utils.save_figure(fig, path, dpi=100)


def plot_training(history, path):
    titles = {"mel": "multi-scale log-mel L1 (dB)", "commit": "commitment (MSE)", "distill": "distillation (1 - cos)"}
    keys = [k for k in titles if any(v for _, v in history[k])]       # no panel for a loss that was off
    fig, axes = _row(len(keys), (4.3, 3.5))
    for ax, key in zip(axes, keys):
        steps, values = zip(*history[key])
        k = min(25, len(values))
        ax.plot(steps[k - 1:], np.convolve(values, np.ones(k) / k, mode="valid"))
        ax.set(xlabel="step", title=titles[key])
        ax.grid(alpha=0.3)
    utils.save_figure(fig, path, dpi=100)
