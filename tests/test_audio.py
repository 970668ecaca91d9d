import math

import numpy as np
import pytest
import scipy.io.wavfile
import torch

from nanosdm.corpus import audio


def tone(sr, seconds=0.5, freq=440.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("dtype,scale,offset", [
    (np.uint8, 127, 128), (np.int16, 32767, 0), (np.int32, 2**31 - 1, 0), (np.float32, 1.0, 0), (np.float64, 1.0, 0)])
def test_formats_round_trip(tmp_path, dtype, scale, offset):
    x = tone(16000)
    path = tmp_path / "x.wav"
    scipy.io.wavfile.write(path, 16000, (x * scale + offset).astype(dtype))
    y = audio.load_wav(path)
    assert y.dtype == torch.float32 and y.shape == (16000 * 0.5,)
    tol = 1.5 / 128 if dtype == np.uint8 else 1e-4
    assert np.abs(y.numpy() - x).max() < tol


def test_24bit_pcm(tmp_path):
    # scipy has no 24-bit writer: write the RIFF header and 3-byte little-endian samples by hand
    x = tone(16000)
    ints = np.round(x * (2**23 - 1)).astype(np.int32)
    raw = np.stack([(ints >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8).tobytes()
    header = b"RIFF" + (36 + len(raw)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    header += (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16000).to_bytes(4, "little")
    header += (16000 * 3).to_bytes(4, "little") + (3).to_bytes(2, "little") + (24).to_bytes(2, "little")
    path = tmp_path / "x24.wav"
    path.write_bytes(header + b"data" + len(raw).to_bytes(4, "little") + raw)
    y = audio.load_wav(path)
    assert np.abs(y.numpy() - x).max() < 1e-5


@pytest.mark.parametrize("sr", [8000, 22050, 24000, 44100, 48000])
def test_resampled_to_16k(tmp_path, sr):
    path = tmp_path / "x.wav"
    scipy.io.wavfile.write(path, sr, tone(sr, seconds=1.0, freq=440.0))
    y = audio.load_wav(path).numpy()
    assert abs(len(y) - 16000) <= 1
    # the tone keeps its pitch: the spectral peak stays at 440 Hz
    spec = np.abs(np.fft.rfft(y[2000:14000]))
    assert abs(np.argmax(spec) * 16000 / 12000 - 440) < 3


def test_stereo_mix_and_channel(tmp_path):
    left, right = tone(16000, freq=300), tone(16000, freq=1000, amp=0.25)
    path = tmp_path / "st.wav"
    audio.save_wav(path, np.stack([left, right]), 16000)
    assert np.abs(audio.load_wav(path, channel=0).numpy() - left).max() < 1e-4
    assert np.abs(audio.load_wav(path, channel=1).numpy() - right).max() < 1e-4
    assert np.abs(audio.load_wav(path).numpy() - (left + right) / 2).max() < 1e-4
    with pytest.raises(audio.AudioError, match="channel 2"):
        audio.load_wav(path, channel=2)


def test_bad_inputs_name_the_path_and_problem(tmp_path):
    with pytest.raises(audio.AudioError, match="no such file"):
        audio.load_wav(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(audio.AudioError, match="empty.wav: empty file"):
        audio.load_wav(empty)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio at all, just some text")
    with pytest.raises(audio.AudioError, match="notes.wav: not a readable wav"):
        audio.load_wav(text)
    nosamples = tmp_path / "nosamples.wav"
    scipy.io.wavfile.write(nosamples, 16000, np.zeros(0, dtype=np.int16))
    with pytest.raises(audio.AudioError, match="no samples"):
        audio.load_wav(nosamples)
    nan = tmp_path / "nan.wav"
    scipy.io.wavfile.write(nan, 16000, np.full(100, np.nan, dtype=np.float32))
    with pytest.raises(audio.AudioError, match="nan.wav: every sample is NaN"):
        audio.load_wav(nan)
    with pytest.raises(audio.AudioError, match="empty"):
        audio.save_wav(tmp_path / "out.wav", np.zeros(0))


def test_log_mel_and_mfcc_shapes_and_values():
    x = torch.from_numpy(tone(16000, seconds=1.0, freq=1000, amp=1.0))
    lm = audio.log_mel(x, n_mels=80)
    assert lm.shape == (80, 101)
    # a full-scale sine peaks near 0 dB in the band holding 1 kHz, and is quiet far away
    mid = lm[:, 50]
    assert -6 < mid.max() < 3 and mid[-1] < mid.max() - 40
    batch = torch.stack([x, 0.1 * x])
    lb = audio.log_mel(batch)
    assert lb.shape == (2, 80, 101)
    loud = lb[1] > -60                                       # away from the -80 dB floor
    assert loud.sum() > 100
    assert torch.allclose((lb[0] - lb[1])[loud], torch.tensor(20.0), atol=0.1)   # 10x amplitude = 20 dB
    m = audio.mfcc(batch)
    assert m.shape == (2, 39, 101)
    assert torch.isfinite(m).all()
    c0 = (m[0, 0] - m[1, 0])[5:-5]          # 20 dB quieter: the energy coefficient drops by one constant
    assert c0.mean() > 1 and c0.std() < 0.05 * c0.mean()
    # deltas of a constant signal vanish
    assert audio.deltas(torch.ones(3, 50)).abs().max() == 0


def test_mel_filterbank_covers_band():
    fb = audio.mel_filterbank(400, 40, 16000)
    assert fb.shape == (40, 201)
    assert (fb.sum(0)[5:195] > 0).all() and math.isclose(fb.max().item(), 1.0, rel_tol=0.1)


def test_a_stretch_of_a_file_is_read_alone(tmp_path):
    x = np.stack([np.linspace(0, 0.5, 32000), -np.linspace(0, 0.5, 32000)]).astype(np.float32)
    audio.save_wav(tmp_path / "d.wav", x)
    whole = audio.load_wav(tmp_path / "d.wav", channel=1)
    part = audio.load_wav(tmp_path / "d.wav", channel=1, start=0.5, end=1.25)
    assert part.shape == (12000,) and torch.equal(part, whole[8000:20000])
    assert audio.load_wav(tmp_path / "d.wav", start=1.5).shape == (8000,)
    with pytest.raises(audio.AudioError, match="no samples"):
        audio.load_wav(tmp_path / "d.wav", start=3.0)


def test_an_echo_adds_fading_copies_after_the_sound_and_only_within_the_clip():
    from nanosdm.corpus.audio import add_echo
    wav = torch.zeros(2, 8000)
    wav[:, 100] = 1.0                                                    # a click
    out = add_echo(wav, torch.tensor([8000, 3000]), torch.Generator().manual_seed(0), prob=1.0, taps=3)
    for row, n in zip(out, (8000, 3000)):
        taps = (row[101:] != 0).nonzero()[:, 0] + 101
        assert row[100] == 1.0 and len(taps) >= 1 and (taps < n).all()
        gains = row[taps]
        assert (gains.diff() < 0).all() and (gains < 1).all()             # each copy fainter than the last
        d = taps[0] - 100
        assert torch.equal(taps - 100, d * torch.arange(1, len(taps) + 1))     # at d, 2d, 3d
    assert torch.equal(add_echo(wav, torch.tensor([8000, 8000]), torch.Generator(), prob=0.0), wav)
