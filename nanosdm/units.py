"""
HuBERT-like discrete speech units, at nano scale: what SpeechGPT, LLaMA-Omni, SyncLLM and friends
model in place of audio (seed section 4.3).

    iteration 1   k-means on MFCC frames (+deltas) gives a first, crude label for every 20 ms frame;
                  by default the MFCCs of the same words re-spoken in one canonical voice (unitstrain.py)
    encoder       log-mel -> two convolutions down to 50 frames/s -> the shared transformer
                  (bidirectional). Spans of frames are masked (about 8% of frames start a span of
                  10) and the encoder predicts the iteration-1 label of the masked frames from their
                  context: cross-entropy over cosine similarities / temperature
    iteration 2   k-means on a middle layer of the trained encoder gives the final units

Why it works: a masked frame can only be predicted from the phones around it, so with enough
training the encoder learns what frames mean in context rather than how they sound (voice, pitch),
and its middle layers cluster by phone better than the MFCCs that taught it.

Why log-mel and not raw-wave convolutions as in HuBERT: a 16 kHz wave front end spends most of the
encoder's FLOPs in its first convolutions (320x downsampling through 7 layers); the STFT does that
work almost for free, which on a CPU is the difference between minutes and hours.

Frames: frame i covers samples [320 i, 320 (i+1)), so a wav of T samples has T // 320 frames.
Quality is measured in eval/metrics.py, against the synthesizer's phone timings: PNMI, phone purity
and cluster purity (HuBERT paper).

    units = Units.load("out/tiny/units.pt")
    ids = units.encode(wav)                  # [frames] long, 50 per second
    values, durations = dedup(ids)           # run-length collapse
    feats = units.features(wav_batch)        # [B, frames, D]: the clustered layer, for distillation

How the encoder is trained, and why each change to HuBERT's recipe: unitstrain.py.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanosdm import utils
from nanosdm.corpus import audio
from nanosdm.kmeans import assign
from nanosdm.transformer import Transformer

SAMPLE_RATE = audio.SAMPLE_RATE
HOP = 320                 # samples per unit frame: 20 ms, 50 frames per second (HuBERT's rate)
FRAME_RATE = SAMPLE_RATE // HOP
MEL_HOP = 160             # log-mel and MFCC come at 100 Hz; two of their frames make one unit frame
N_MELS = 40               # enough for the formants; 80 bands also resolve pitch harmonics
MAX_FRAMES = 4096         # longest input the encoder's rotary tables cover (82 s)


# -----------------------------------------------------------------------------
# frame-level features, 50 per second

def num_frames(n_samples):
    return n_samples // HOP


def mfcc_frames(wav):
    """MFCC + deltas of one wav [T] -> [T // 320, 39]. The 100 Hz MFCC frame 2i+1 is centred on
    sample 320 i + 160, the middle of unit frame i; its deltas already summarise the neighbours."""
    return audio.mfcc(wav)[:, 1::2][:, :num_frames(wav.shape[-1])].T.contiguous()


def wav_to_mel(wav):
    """Encoder input: log-mel [B, N_MELS, T // 160 + 1] scaled to about [-2, 2]. Each input's mean
    is removed per band (cepstral mean normalisation): a voice's timbre and its recording's
    loudness are mostly a constant offset in log-mel, and they say nothing about the phone."""
    mel = audio.log_mel(wav, n_mels=N_MELS, hop=MEL_HOP)
    return (mel - mel.mean(-1, keepdim=True)) / 20.0


def warp_mel(mel, amount, gen=None, knots=1):
    """Speaker perturbation: stretch each example's mel axis by a random factor in 1 +- amount,
    roughly what a longer or shorter vocal tract does to the formants. The targets stay those of
    the unwarped audio, so the encoder learns to ignore the stretch (ContentVec's idea, simplified).
    knots > 1: a factor drawn at each of `knots` bands evenly spaced, linear between them, so the
    low and high formants move apart (as in eSpeak's variants, which scale each formant on its own)."""
    B, M, _ = mel.shape
    alpha = 1 + (torch.rand(B, knots, generator=gen) * 2 - 1) * amount
    if knots > 1:   # [B, knots] -> [B, M]; monotone while amount < 1 / (2 * knots)
        alpha = F.interpolate(alpha[:, None], size=M, mode="linear", align_corners=True)[:, 0]
    return stretch_mel(mel, alpha.to(mel.device))


def stretch_mel(mel, alpha):
    """mel [B, M, T], alpha [B, 1] (or [B, M], one factor per band): output band m reads input band
    m * alpha (linear between bands)."""
    M = mel.shape[1]
    src = (torch.arange(M, device=mel.device)[None] * alpha).clamp(max=M - 1)   # [B, M] band to read
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=M - 1)
    w = (src - lo)[..., None]
    read = lambda idx: mel.gather(1, idx[..., None].expand_as(mel))
    return read(lo) * (1 - w) + read(hi) * w


# -----------------------------------------------------------------------------
# masked prediction

def span_mask(batch, n_frames, prob, span, gen=None, device="cpu"):
    """bool [batch, n_frames]: every frame that can start a whole span starts one with probability
    `prob`, and a span covers `span` frames. Spans overlap freely, so the covered fraction is about
    1 - (1 - prob)^span (57% for HuBERT's 8% and 10). At least one span per row."""
    n_starts = max(1, n_frames - span + 1)
    starts = torch.rand(batch, n_starts, generator=gen, device=device) < prob
    starts[torch.arange(batch, device=device), torch.randint(n_starts, (batch,), generator=gen, device=device)] = True
    # a frame is masked when a span started in any of the `span` frames up to it
    padded = F.pad(starts.float(), (span - 1, n_frames - n_starts))
    return F.max_pool1d(padded[:, None], span, stride=1)[:, 0].bool()


class HubertEncoder(nn.Module):
    def __init__(self, n_targets, n_layer, n_head, d_model, proj_dim, temperature=0.1, n_mels=N_MELS,
                 max_seq_len=MAX_FRAMES, causal=False, window=0):
        super().__init__()
        self.config = dict(n_targets=n_targets, n_layer=n_layer, n_head=n_head, d_model=d_model,
                           proj_dim=proj_dim, temperature=temperature, n_mels=n_mels, max_seq_len=max_seq_len,
                           causal=causal, window=window)
        self.temperature, self.causal = temperature, causal
        # 100 Hz mel -> 50 Hz. Bidirectional: output i sees mel frames 2i..2i+2 (through the first
        # conv, 2i-1..2i+3), centred on mel frame 2i+1 = sample 320 i + 160, the middle of unit frame
        # i. Causal (a streaming ear): output i sees mel frames 2i-4..2i, whose windows end by sample
        # 320 i + 200, inside frame i: a frame's unit is known as soon as the frame has been heard.
        self.conv1 = nn.Conv1d(n_mels, d_model, 3, padding=0 if causal else 1)
        self.conv2 = nn.Conv1d(d_model, d_model, 3, stride=2)
        self.mask_emb = nn.Parameter(torch.randn(d_model) * 0.02)   # what a masked frame looks like
        self.transformer = Transformer(n_layer, n_head, d_model, causal=causal, max_seq_len=max_seq_len, window=window)
        self.proj = nn.Linear(d_model, proj_dim)
        self.label_emb = nn.Parameter(torch.randn(n_targets, proj_dim))
        if causal:   # a fixed per-band mean (the training speech's): a stream has no "whole input" to average
            self.register_buffer("mel_mean", torch.zeros(n_mels))

    def mel(self, wav):
        """The encoder's input, log-mel [B, n_mels, T // 160 + 1] (see wav_to_mel)."""
        if not self.causal:
            return wav_to_mel(wav)
        return (audio.log_mel(wav, n_mels=self.config["n_mels"], hop=MEL_HOP) - self.mel_mean[:, None]) / 20.0

    def frontend(self, mel):
        """log-mel [B, n_mels, M] -> frame features [B, (M - 1) // 2, D]"""
        if not self.causal:
            return F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = F.gelu(self.conv1(F.pad(mel, (2, 0))))
        x = F.gelu(self.conv2(F.pad(x, (2, 0))))
        return x[..., :(mel.shape[-1] - 1) // 2].transpose(1, 2)

    def forward(self, mel, mask=None, layer=None):
        """mask: bool [B, N] frames to hide. Returns logits [B, N, n_targets] (cosine similarity
        between the projected output and each target's embedding, over the temperature), or with
        layer=l the output of block l (1-based) [B, N, D]."""
        x = self.frontend(mel)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        if layer is not None:
            return self.transformer(x, return_layers=True)[1][layer - 1]
        h = self.transformer(x)
        z = F.normalize(self.proj(h).float(), dim=-1)
        return z @ F.normalize(self.label_emb.float(), dim=-1).T / self.temperature


def masked_loss(logits, targets, mask):
    """Cross-entropy on masked frames only: predicting a visible frame's label is just reading it.
    Targets < 0 (padding) are ignored too."""
    keep = mask & (targets >= 0)
    return F.cross_entropy(logits[keep], targets[keep])


# -----------------------------------------------------------------------------
# the trained units

class Units:
    """Encoder up to the clustered layer + the k-means centroids of that layer's features."""

    def __init__(self, encoder, layer, centroids):
        self.encoder = encoder.eval()
        self.layer = layer
        self.centroids = centroids
        self.k = centroids.shape[0]
        self.dim = centroids.shape[1]
        self.frame_rate = FRAME_RATE
        self.hop = HOP

    @classmethod
    def load(cls, path, device="cpu"):
        ckpt = utils.load_checkpoint(path, device)
        if not ckpt.get("finished"):
            raise ValueError(f"{path} is a partial units checkpoint: finish `python train.py --stage=units`")
        encoder = HubertEncoder(**ckpt["config"]).to(device)
        encoder.load_state_dict(ckpt["model"])
        # the blocks above the clustered layer only served the masked prediction: drop them
        encoder.transformer.blocks = encoder.transformer.blocks[:ckpt["layer"]]
        return cls(encoder, ckpt["layer"], ckpt["centroids"].to(device))

    @property
    def device(self):
        return self.centroids.device

    @property
    def context(self):
        """A windowed causal encoder's reach: the frames before a frame that its features depend
        on (the attention's n_layer * (window - 1), and 4 for the convolutions and the STFT's edge)."""
        return len(self.encoder.transformer.blocks) * (self.encoder.config["window"] - 1) + 4

    @torch.no_grad()
    def features(self, wav, piece_frames=2048, stretch=1.0):
        """wav [B, T] (or [T]) at 16 kHz -> the clustered layer's features [B, T // 320, D], 50 Hz.
        A windowed causal encoder reads long audio in pieces of piece_frames (each with its context
        before it): the same features as one pass, with no limit on the length. stretch != 1 hears the
        audio as a longer or shorter vocal tract would say it (stretch_mel: the speech stage's ear_warp)."""
        squeeze = wav.dim() == 1
        wav = wav.reshape(-1, wav.shape[-1]).to(self.device)
        n = num_frames(wav.shape[-1])
        if self.encoder.config.get("window") and n > piece_frames:
            parts = []
            for a in range(0, n, piece_frames):
                s = max(0, a - self.context)
                b = min(n, a + piece_frames)
                parts.append(self.features(wav[:, s * HOP:b * HOP], piece_frames=b - s, stretch=stretch)[:, a - s:])
            feats = torch.cat(parts, 1)
        else:
            mel = self.encoder.mel(wav)
            if stretch != 1.0:
                mel = stretch_mel(mel, torch.full((mel.shape[0], 1), float(stretch), device=mel.device))
            feats = self.encoder(mel, layer=self.layer).float()
        return feats[0] if squeeze else feats

    @torch.no_grad()
    def encode(self, wav, stretch=1.0):
        """wav [T] or [B, T] -> unit ids [T // 320] or [B, T // 320] (long), one per 20 ms frame."""
        feats = F.normalize(self.features(wav, stretch=stretch), dim=-1)
        return assign(feats.reshape(-1, self.dim), self.centroids)[0].reshape(feats.shape[:-1])


class UnitStream:
    """A live stream's units, a few 20 ms frames at a time (80 ms in the live loop): the ids that
    Units.encode gives for the whole stream, from the last `context` frames of audio only, so a
    conversation of any length costs the same per step. Needs a causal encoder with an attention
    window (units_causal, units_window)."""

    def __init__(self, units):
        cfg = units.encoder.config
        if not (cfg.get("causal") and cfg.get("window")):
            raise ValueError("a streaming ear needs causal units with an attention window: "
                             "python train.py --stage=units --units_causal=True --units_window=100")
        self.units, self.buf = units, torch.zeros(0)

    def step(self, wav):
        """wav [n * 320] float, the next n frames of the stream -> their unit ids [n]."""
        wav = torch.as_tensor(wav).float().reshape(-1)
        if wav.numel() % HOP:
            raise ValueError(f"a stream is read in whole 20 ms frames ({HOP} samples), got {wav.numel()} samples")
        n = wav.numel() // HOP
        self.buf = torch.cat([self.buf, wav])[-(self.units.context + n) * HOP:]   # frame-aligned: the STFT's hops too
        return self.units.encode(self.buf)[-n:]


def dedup(units):
    """Run-length collapse: [5, 5, 5, 9, 9, 5] -> (values [5, 9, 5], durations in frames [3, 2, 1]).
    Deduplicated units are what LLaMA-Omni's CTC decoder and SyncLLM model."""
    values, durations = torch.unique_consecutive(units, return_counts=True)
    return values, durations


# -----------------------------------------------------------------------------
# data: utterances of the SpokenWorld corpus, cut to whole frames

def load_utterances(data_dir, split, speaker=None, max_hours=0.0):
    """(list of wav [T] float, list of phone timings, list of texts) for the single turns of a split."""
    from nanosdm.corpus.spokenworld import SpeechSplit
    wavs, phones, texts, total = [], [], [], 0
    for wav, turn in SpeechSplit(data_dir, split).utterances(speaker):
        n = num_frames(len(wav)) * HOP
        if n == 0:
            continue
        wavs.append(wav[:n])
        phones.append(turn["phones"])
        texts.append(turn["text"])
        total += n
        if max_hours and total >= max_hours * 3600 * SAMPLE_RATE:
            break
    return wavs, phones, texts
