"""
The codec's training objectives (codec.py's `train` adds them up), apart so that codec.py reads as
the model and its stage:

    mel_loss             L1 between log-mel spectrograms at three resolutions (16 to 64 ms windows),
                         in dB: what the evaluation measures too; the unit vocoder (vocoder.py) trains
                         on it as well
    Discriminator        EnCodec's multi-scale STFT discriminator: discriminator_loss trains it (hinge),
                         generator_adv_loss gives the decoder its adversarial and feature-matching
                         losses. Off by default (codec_adv_weight=0; the small preset turns it on)

Codebook 0's distillation toward the units (distill_loss) stays in codec.py: it pools by the codec's
own frame constants.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanosdm.corpus import audio

SAMPLE_RATE = audio.SAMPLE_RATE
MEL_SCALES = ((256, 40), (512, 80), (1024, 128))   # (n_fft, n_mels) of the mel loss: 16 to 64 ms

_FILTERBANKS = {}


def fast_log_mel(x, n_fft, n_mels):
    """audio.log_mel in dB (same normalisation, -80 dB floor) with hop n_fft/4, zero padding and a
    cached filterbank: rfft of unfolded frames back-propagates faster on a CPU than torch.stft."""
    key = (n_fft, n_mels, str(x.device))
    if key not in _FILTERBANKS:
        window = torch.hann_window(n_fft, device=x.device)
        fb = audio.mel_filterbank(n_fft, n_mels, SAMPLE_RATE, device=x.device) / (window.sum() ** 2 / 4)
        _FILTERBANKS[key] = (window, fb.T.contiguous())
    window, fb = _FILTERBANKS[key]
    spec = torch.fft.rfft(F.pad(x, (n_fft // 2, n_fft // 2)).unfold(-1, n_fft, n_fft // 4) * window)
    return 10 * torch.log10(((spec.real.square() + spec.imag.square()) @ fb).clamp_min(1e-8))


def mel_loss(y, x):
    """Mean |log-mel difference| in dB over several resolutions: the evaluation's measure."""
    return sum((fast_log_mel(y, n, m) - fast_log_mel(x, n, m)).abs().mean() for n, m in MEL_SCALES) / len(MEL_SCALES)


class STFTDiscriminator(nn.Module):
    """2-D convs over the real and imaginary parts of one STFT (EnCodec's MS-STFT discriminator):
    it sees phase, which the mel loss cannot."""

    def __init__(self, n_fft, ch=32):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList([nn.Conv2d(2, ch, (3, 9), padding=(1, 4))] + [
            nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4)) for d in (1, 2, 4)
        ] + [nn.Conv2d(ch, ch, (3, 3), padding=(1, 1))])
        self.out = nn.Conv2d(ch, 1, (3, 3), padding=(1, 1))

    def forward(self, wav):
        spec = torch.stft(wav.float(), self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        h, features = torch.stack([spec.real, spec.imag], 1).transpose(2, 3), []   # [B, 2, frames, bins]
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            features.append(h)
        return self.out(h).float(), features


class Discriminator(nn.ModuleList):
    def __init__(self, n_ffts=(256, 512, 1024)):
        super().__init__(STFTDiscriminator(n) for n in n_ffts)


def discriminator_loss(disc, real, fake):
    """Hinge loss: real logits above +1, fake below -1."""
    return sum(F.relu(1 - d(real)[0]).mean() + F.relu(1 + d(fake.detach())[0]).mean() for d in disc) / len(disc)


def generator_adv_loss(disc, real, fake):
    """(hinge loss of the decoder's audio, feature matching: L1 between the discriminator's features of
    real and decoded audio, relative to the real features' size)."""
    adv, fm = 0.0, []
    for d in disc:
        feat_r = [f.detach().float() for f in d(real)[1]]
        logit, feat_f = d(fake)
        adv = adv + F.relu(1 - logit).mean()
        fm += [(fr - ff.float()).abs().mean() / (fr.abs().mean() + 1e-8) for fr, ff in zip(feat_r, feat_f)]
    return adv / len(disc), sum(fm) / len(fm)
