"""
Audio in and out, and the two classic speech features.

Everything in nanosdm works on float32 mono waveforms in [-1, 1] at 16 kHz. load_wav gets any
wav file there (PCM 8/16/24/32-bit or float, any rate, mono or stereo), and refuses bad files with
an error that names the path and the problem. log_mel and mfcc are plain torch, so they run on
batches and on a GPU.
"""
import math
import os
from fractions import Fraction

import numpy as np
import scipy.io.wavfile
import torch

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """A wav file that cannot be used, with its path and the reason."""


def load_wav(path, sr=SAMPLE_RATE, channel=None, start=None, end=None):
    """Read a wav file as a float32 tensor [T] in [-1, 1] at rate sr.
    channel=None mixes all channels down; channel=i picks one (two-channel dialogue files).
    start, end: seconds; only that stretch is read from disk (one turn of a long dialogue)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    part = start is not None or end is not None
    try:
        try:   # a stretch: map the file and copy only the samples asked for
            file_sr, x = scipy.io.wavfile.read(path, mmap=part)
        except ValueError:
            if not part:
                raise
            file_sr, x = scipy.io.wavfile.read(path, mmap=False)   # formats scipy cannot map (24-bit)
    except (ValueError, EOFError, OSError) as e:
        raise AudioError(f"{path}: not a readable wav file ({e})") from None
    if part:
        x = x[round((start or 0) * file_sr): None if end is None else round(end * file_sr)]
    x = _to_float(x, path)
    if x.ndim == 2:
        if channel is None:
            x = x.mean(axis=1)
        elif not 0 <= channel < x.shape[1]:
            raise AudioError(f"{path}: asked for channel {channel}, the file has {x.shape[1]}")
        else:
            x = x[:, channel]
    elif channel not in (None, 0):
        raise AudioError(f"{path}: asked for channel {channel} of a mono file")
    if x.size == 0:
        raise AudioError(f"{path}: the wav holds no samples")
    if not np.isfinite(x).any():
        raise AudioError(f"{path}: every sample is NaN or infinite")
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: {int((~np.isfinite(x)).sum())} samples are NaN or infinite")
    x = resample(x, file_sr, sr)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _to_float(x, path):
    if x.dtype == np.uint8:                      # 8-bit PCM is unsigned, centred on 128
        return (x.astype(np.float32) - 128.0) / 128.0
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if x.dtype == np.int32:                      # 24-bit PCM is read left-justified into int32
        return (x.astype(np.float64) / 2147483648.0).astype(np.float32)
    if x.dtype in (np.float32, np.float64):
        return x.astype(np.float32)
    raise AudioError(f"{path}: unsupported sample format {x.dtype}")


def resample(x, from_sr, to_sr):
    """Polyphase resampling along the last axis (exact rational ratio, e.g. 22050 -> 16000 = 320/441)."""
    if from_sr == to_sr:
        return x
    import scipy.signal   # here, not at the top: importing it costs ~0.8 s, paid by every stage that never resamples
    ratio = Fraction(int(to_sr), int(from_sr))
    return scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)


def save_wav(path, wav, sr=SAMPLE_RATE):
    """Write float audio [T] (mono) or [C, T] (channels first, like the rest of nanosdm) as 16-bit PCM."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.T                               # scipy wants [T, C]
    if wav.size == 0:
        raise AudioError(f"{path}: refusing to write an empty wav")
    pcm = (np.clip(np.nan_to_num(wav), -1.0, 1.0) * 32767.0).round().astype(np.int16)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    scipy.io.wavfile.write(path, int(sr), pcm)


# -----------------------------------------------------------------------------
# features: 25 ms windows every 10 ms (100 frames/s), as in Kaldi and HuBERT's MFCC targets

def add_echo(wav, lengths, gen, prob=0.25, max_delay_s=0.15, max_gain=0.7, taps=3):
    """A fading echo (the clip plus copies delayed by d, 2d, ... at gains g, g^2, ...) on a random
    share of the clips: rooms echo, and so do some eSpeak voices (the 'echo' line of a variant)."""
    wav = wav.clone()
    u = lambda lo, hi: lo + (hi - lo) * float(torch.rand(1, generator=gen))
    for i in range(len(wav)):
        if float(torch.rand(1, generator=gen)) >= prob:
            continue
        d, g, n = int(u(0.02, max_delay_s) * SAMPLE_RATE), u(0.2, max_gain), int(lengths[i])
        dry = wav[i, :n].clone()
        for k in range(1, taps + 1):
            if k * d < n:
                wav[i, k * d:n] += g ** k * dry[:n - k * d]
    return wav


def mel_filterbank(n_fft, n_mels, sr, f_min=0.0, f_max=None, device=None):
    """Triangular filters on the HTK mel scale, [n_mels, n_fft // 2 + 1]."""
    f_max = f_max or sr / 2
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)
    mels = torch.linspace(mel(f_min), mel(f_max), n_mels + 2, device=device)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, device=device)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs - lower) / (centre - lower)
    down = (upper - freqs) / (upper - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0)


def log_mel(wav, sr=SAMPLE_RATE, n_mels=80, n_fft=400, hop=160, f_min=0.0, f_max=None, floor_db=-80.0):
    """Log-mel spectrogram in dB, [..., n_mels, frames], floored at floor_db below 0 dB full scale.
    Frames are centred: frame i covers sample i*hop +- n_fft/2, so frames = T // hop + 1."""
    shape = wav.shape
    x = wav.reshape(-1, shape[-1]).float()
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True).abs() ** 2
    fb = mel_filterbank(n_fft, n_mels, sr, f_min, f_max, device=x.device)
    # normalise so a full-scale sine sits near 0 dB whatever the window length
    power = fb @ spec / (window.sum() ** 2 / 4)
    db = 10.0 * torch.log10(power.clamp_min(10 ** (floor_db / 10)))
    return db.reshape(*shape[:-1], n_mels, -1)


def deltas(feat, width=2):
    """Regression deltas along the last (time) axis, as in HTK: sum_k k (x[t+k] - x[t-k]) / (2 sum_k k^2)."""
    padded = torch.nn.functional.pad(feat, (width, width), mode="replicate")
    t = feat.shape[-1]
    num = sum(k * (padded[..., width + k: width + k + t] - padded[..., width - k: width - k + t])
              for k in range(1, width + 1))
    return num / (2 * sum(k * k for k in range(1, width + 1)))


def mfcc(wav, sr=SAMPLE_RATE, n_mfcc=13, n_mels=40, with_deltas=True):
    """MFCCs (DCT-II of the log-mel), plus deltas and delta-deltas: [..., 39, frames] at 100 Hz."""
    lm = log_mel(wav, sr, n_mels=n_mels) * (math.log(10) / 10)   # dB -> natural log power
    n = torch.arange(n_mels, device=lm.device, dtype=lm.dtype)
    k = torch.arange(n_mfcc, device=lm.device, dtype=lm.dtype)[:, None]
    dct = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    dct[0] /= math.sqrt(2.0)                                      # orthonormal DCT-II
    c = torch.einsum("km,...mt->...kt", dct, lm)
    if not with_deltas:
        return c
    d1 = deltas(c)
    return torch.cat([c, d1, deltas(d1)], dim=-2)
