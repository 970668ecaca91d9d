"""The recognizer (asr.py): its loss, padding, SpecAugment, a short training run, long audio, bad
input, the stage (error rates: test_eval_metrics.py; decoding and the LM: test_ctc.py)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanosdm import asr, ctc, utils
from nanosdm.corpus import audio, espeak
from nanosdm.eval import metrics

SR = audio.SAMPLE_RATE


@pytest.fixture(autouse=True)
def one_thread():
    # these models are tiny: a second thread only adds synchronisation (10x slower on a busy 2-core box)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ids(text):
    return ctc.encode_text(text)


def test_model_loss_matches_f_ctc_loss():
    torch.manual_seed(0)
    model = asr.ASR(n_layer=1, n_head=2, d_model=32, dropout=0.0).eval()
    wav = torch.randn(3, 8000) * 0.1
    lengths = torch.tensor([8000, 6000, 4000])
    targets = [ids("abc"), ids("hello"), ids("x y")]
    feat, flen = asr.features(wav, lengths)
    loss = model.loss(feat, flen, targets)
    lp, out_len = model(feat, flen)
    assert out_len.tolist() == [(8000 // 160) // 3 + 1, (6000 // 160) // 3 + 1, (4000 // 160) // 3 + 1]
    # F.ctc_loss's "mean": each clip's negative log-likelihood over its target length, averaged
    per_clip = [ctc.ctc_nll(lp[i, :out_len[i]].double(), t).item() / len(t) for i, t in enumerate(targets)]
    assert loss.item() == pytest.approx(sum(per_clip) / 3, rel=1e-4)
    flat = torch.tensor([i for t in targets for i in t])
    ref = F.ctc_loss(lp.transpose(0, 1), flat, out_len, torch.tensor([len(t) for t in targets]))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_padding_does_not_change_the_output():
    torch.manual_seed(0)
    model = asr.ASR(n_layer=2, n_head=2, d_model=32, dropout=0.0).eval()
    a, b = torch.randn(7000) * 0.1, torch.randn(12000) * 0.1
    x, lengths = asr.pad_batch([a, b])
    lp, out_len = model(*asr.features(x, lengths))
    lp_a, n_a = model(*asr.features(a[None], torch.tensor([7000])))
    assert out_len[0] == n_a[0]
    torch.testing.assert_close(lp[0, :n_a[0]], lp_a[0], atol=1e-4, rtol=1e-4)


def test_spec_augment_masks_bands_and_spans():
    B, T = 200, 300                                               # 3 s clips: 3 time masks each
    feat = torch.ones(B, asr.N_MELS, T)
    out = asr.spec_augment(feat, torch.full((B,), T), torch.Generator().manual_seed(0))
    assert feat.eq(1).all()                                       # the input is left alone
    zero = out == 0
    bands, frames = zero.all(-1), zero.all(1)                     # [B, mels], [B, T]
    # what is zeroed is whole bands and whole frames, nothing else; the warp keeps a constant constant
    assert torch.equal(zero, bands[:, :, None] | frames[:, None, :])
    torch.testing.assert_close(out[~zero], torch.ones_like(out[~zero]))
    # 2 bands of 0-15 mels and 3 spans of 0-8 frames per clip: at most 30 and 24, on average
    # 15 and 12 less their overlaps
    per_clip_bands, per_clip_frames = bands.sum(1).float(), frames.sum(1).float()
    assert per_clip_bands.max() <= 2 * 15 and per_clip_frames.max() <= 3 * 8
    assert 11.5 < per_clip_bands.mean() <= 15 and 10 < per_clip_frames.mean() <= 12.8


# -----------------------------------------------------------------------------
# a short training run, transcribe, load, errors

def test_short_training_run_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    texts = ["the red ball", "a blue cat", "the green hat", "a pink dog"]
    clips = [(espeak.synthesize(t, voice=v)[0], t) for t in texts for v in ("en-us", "en-us+m3")]
    x, lengths = asr.pad_batch([torch.from_numpy(w) for w, _ in clips])
    targets = [ids(t) for _, t in clips]
    model = asr.ASR(n_layer=1, n_head=2, d_model=64, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    feat, flen = asr.features(x, lengths)
    wavs, refs = [torch.from_numpy(w) for w, _ in clips], [t for _, t in clips]
    untrained_cer = metrics.cer(refs, model.eval().transcribe(wavs))
    model.train()
    losses = []
    for step in range(80):
        loss = model.loss(feat, flen, targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < 2.0, losses[::10]
    # it learnt its 8 clips: an untrained one spells nothing (CER ~0.9); this one (~0.03) has a few slips
    hyps = model.eval().transcribe(wavs)
    assert untrained_cer > 0.7 and metrics.cer(refs, hyps) < 0.15, (untrained_cer, hyps)

    path = tmp_path / "asr.pt"
    utils.save_checkpoint(str(path), dict(model=model.state_dict(), config=model.config))
    loaded = asr.ASR.load(str(path))
    single = loaded.transcribe(torch.from_numpy(clips[0][0]))
    batch = loaded.transcribe([torch.from_numpy(w) for w, _ in clips[:3]])
    assert isinstance(single, str) and isinstance(batch, list) and len(batch) == 3
    assert batch == hyps[:3] and batch[0] == single  # the loaded one as the trained one; batched and alone agree
    assert set(single) <= set(ctc.CHARS)


def test_long_audio_is_cut_at_silences():
    sr = SR
    burst = lambda s: torch.randn(int(s * sr)) * 0.3
    quiet = lambda s: torch.zeros(int(s * sr))
    wav = torch.cat([burst(3.0), quiet(0.5), burst(4.0), quiet(0.5), burst(2.5)])  # 10.5 s
    pieces = asr.split_on_silence(wav, max_s=5.0, min_s=1.0)
    assert sum(len(p) for p in pieces) == len(wav)
    assert all(len(p) <= 5 * sr for p in pieces) and len(pieces) == 3
    # the cuts fall inside the two quiet stretches
    cuts = np.cumsum([len(p) for p in pieces])[:-1] / sr
    assert 3.0 <= cuts[0] <= 3.5 and 7.5 <= cuts[1] <= 8.0


def test_bad_input_gives_clear_errors(tmp_path):
    model = asr.ASR(n_layer=1, n_head=2, d_model=32)
    with pytest.raises(audio.AudioError, match="at least"):
        model.transcribe(torch.zeros(0))
    with pytest.raises(audio.AudioError, match="clip 1"):
        model.transcribe([torch.zeros(8000), torch.zeros(2, 8000)])
    with pytest.raises(audio.AudioError, match="NaN"):
        model.transcribe(torch.full((8000,), math.nan))
    # files (what sample.py --asr reads): the error names the path
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(audio.AudioError, match="empty.wav"):
        audio.load_wav(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not a wav file at all")
    with pytest.raises(audio.AudioError, match="junk.wav"):
        audio.load_wav(junk)


def write_mini_corpus(data_dir):
    """Two-channel SpokenWorld-format splits of a few eSpeak sentences (see nanosdm/corpus/spokenworld.py)."""
    import json
    data_dir.mkdir(parents=True)
    texts = ["what colour is the kotan?", "the kotan is red.", "tell me my name.", "your name is ana."]
    for split, voice in (("train", "en-us"), ("val", "en-us"), ("unseen_voice", "en-us+m3")):
        turns, pieces, t = [], [], 0
        for i, text in enumerate(texts):
            wav, words, _ = espeak.synthesize(text, voice=voice)
            ch = i % 2  # channel 0 assistant, 1 user
            turns.append(dict(speaker=("assistant", "user")[ch], kind=("answer", "question")[ch], text=text,
                              start=t / SR, end=(t + len(wav)) / SR, words=[[w, s + t / SR, e + t / SR] for w, s, e in words],
                              phones=[]))
            pieces.append((ch, t, wav))
            t += len(wav) + SR // 5
        stereo = np.zeros((t, 2), np.int16)
        for ch, s, wav in pieces:
            stereo[s:s + len(wav), ch] = np.round(wav * 32767)
        stereo.tofile(data_dir / f"speech_{split}.bin")
        meta = dict(id=f"{split}-0", offset=0, length=t, user_voice=dict(voice=voice), turns=turns)
        (data_dir / f"speech_{split}.jsonl").write_text(json.dumps(meta) + "\n")
    (data_dir / "corpus.json").write_text(json.dumps(dict(seen_voices=["en-us", "en-us+f2"])))
    (data_dir / "text_train.jsonl").write_text(json.dumps(dict(turns=[["user", texts[0]], ["assistant", texts[1]]])) + "\n")


def test_stage_resumes_and_reports(tmp_path, capsys):
    write_mini_corpus(tmp_path / "data")
    cfg = dict(device="cpu", seed=0, data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), workers=1,
               asr_n_layer=1, asr_n_head=2, asr_d_model=32, asr_dropout=0.0, asr_batch_size=4, asr_max_steps=6,
               asr_lr=3e-3, asr_warmup=2, asr_weight_decay=0.0, asr_grad_clip=1.0, asr_beam=4,
               asr_ckpt_interval=100, asr_scrambled_turns=3, asr_lm_order=4, asr_lm_weight=0.2, asr_char_bonus=2.0)
    assert asr.train(cfg, stop_step=3) == {}  # "killed" after 3 steps: a partial checkpoint
    ckpt = utils.load_checkpoint(str(tmp_path / "out" / "asr.pt"))
    assert ckpt["step"] == 3 and len(ckpt["history"]["train"]) == 3
    figures = asr.train(cfg)
    assert "resuming from" in capsys.readouterr().out
    figures.update(metrics.evaluate_asr_checkpoint(cfg))    # what the stage runner does next
    assert utils.load_checkpoint(str(tmp_path / "out" / "asr.pt"))["step"] == 6
    assert figures["asr_eval_clips"] == 2 and "asr_wer_codec" not in figures  # no codec here
    # the figures are those of the saved recognizer on the unseen voice's user turns
    model = asr.ASR.load(str(tmp_path / "out" / "asr.pt"))
    clips = asr.load_clips(cfg["data_dir"], "unseen_voice", speaker="user")
    refs, wavs = [t for _, t in clips], [w.float() / 32768 for w, _ in clips]
    assert refs == ["the kotan is red", "your name is ana"]
    hyps = model.transcribe(wavs)
    assert figures["asr_wer"] == round(metrics.wer(refs, hyps), 4)
    assert figures["asr_cer"] == round(metrics.cer(refs, hyps), 4)
    history = utils.load_checkpoint(str(tmp_path / "out" / "asr.pt"))["history"]["train"]
    assert figures["asr_train_loss"] == pytest.approx(sum(l for _, l in history) / 6, abs=1e-4)  # all 6 steps
    # and they are scored as hand-counted: a recognizer that drops "ana" makes 1 word error in 8
    # and 4 character errors (" ana") in 32, in every decoding and on both splits
    model.transcribe = lambda wavs, beam=0, use_lm=True: ["the kotan is red.", "your name is"]
    known = metrics.evaluate_asr(model, cfg)
    for key in ("asr_wer", "asr_wer_beam", "asr_wer_lm", "asr_wer_heldout_phrasing", "asr_wer_heldout_phrasing_lm"):
        assert known[key] == 0.125, key
    assert known["asr_cer"] == known["asr_cer_lm"] == 0.125
    assert (tmp_path / "out" / "plots" / "asr_posteriors.png").stat().st_size > 10_000
    # the character LM travels with the recognizer
    model = asr.ASR.load(str(tmp_path / "out" / "asr.pt"))
    assert model.lm is not None and model.lm.order == cfg["asr_lm_order"] and model.lm_weight == cfg["asr_lm_weight"]


# -----------------------------------------------------------------------------
# forced alignment: word timings from a known transcript

class PlannedASR(torch.nn.Module):
    """Stands in for a trained recognizer: whatever it hears, it emits the planned frame labels
    ('-' blank, '_' space), nearly one-hot."""

    def __init__(self, frames):
        super().__init__()
        self.frames = frames
        self.head = torch.nn.Linear(1, 1)   # frame_log_probs reads the device from the head

    def forward(self, feat, flen):
        lengths = asr.conv_lengths(flen)
        p = torch.full((len(feat), int(lengths.max()), ctc.VOCAB_SIZE), 1e-4)
        for t, c in enumerate(self.frames[:p.shape[1]]):
            p[:, t, ctc.BLANK if c == "-" else 1 if c == "_" else ids(c)[0]] = 1.0
        return (p / p.sum(-1, keepdim=True)).log(), lengths


def assert_timings_equal(got, expect):
    """(word, start, end) lists equal: the words exactly, the times up to float rounding. Field by
    field, since pytest.approx refuses nested structures (pytest >= 9.2)."""
    assert [w for w, _, _ in got] == [w for w, _, _ in expect]
    for (w, s, e), (_, s0, e0) in zip(got, expect):
        assert s == pytest.approx(s0) and e == pytest.approx(e0), w


def planned_clip(frames):
    """A waveform with exactly len(frames) recognizer frames."""
    n = (len(frames) - 1) * asr.SUBSAMPLE * asr.HOP
    wav = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(0))
    assert len(asr.frame_log_probs(PlannedASR(frames), wav)) == len(frames)
    return wav


def test_align_words_turns_frames_into_seconds():
    frames = "--hh-ii--_-tthheerree---"     # 24 frames of 30 ms
    wav, model = planned_clip(frames), PlannedASR(frames)
    # a word starts one frame before its first character's first frame, ends with its last one's last
    expect = [("hi", 0.03, 0.21), ("there", 0.30, 0.63)]
    assert_timings_equal(asr.align_words(model, wav, "Hi, THERE!"), expect)
    # at another sample rate the times stay in seconds
    wav8k = torch.from_numpy(audio.resample(wav.numpy(), SR, 8000))
    assert_timings_equal(asr.align_words(model, wav8k, "hi there", sr=8000), expect)
    # numerals are normalised into the words that are aligned
    frames = "-ff-oorrttyy_ttwwoo--"
    assert [w for w, _, _ in asr.align_words(PlannedASR(frames), planned_clip(frames), "42.")] == ["forty", "two"]
    # alignment_errors: exact against the planned timings; a reference numeral cannot be scored word by word
    res = asr.alignment_errors(PlannedASR("--hh-ii--_-tthheerree---"), [(wav, expect), (wav, [("42", 0.0, 0.5)])])
    assert res["align_ms"] == pytest.approx(0.0, abs=1e-6) and res["align_words"] == 2 and res["align_skipped"] == 1


def test_align_words_on_speech_is_ordered_and_within_the_clip():
    # an untrained recognizer: the timings mean little, but they must always be well formed
    torch.manual_seed(0)
    model = asr.ASR(n_layer=1, n_head=2, d_model=32, dropout=0.0).eval()
    wav = torch.from_numpy(espeak.synthesize("The 3 kotans live in Lomar, don't they?", voice="en-us")[0])
    got = asr.align_words(model, wav, "The 3 kotans live in Lomar, don't they?")
    assert [w for w, _, _ in got] == "the three kotans live in lomar don't they".split()
    times = [t for _, s, e in got for t in (s, e)]
    assert times == sorted(times) and times[0] >= 0 and times[-1] <= len(wav) / SR
    assert all(e > s for _, s, e in got)


def test_long_clips_are_aligned_in_overlapping_windows():
    torch.manual_seed(0)
    model = asr.ASR(n_layer=1, n_head=2, d_model=32, dropout=0.0, max_seq_len=64).eval()
    wav = 0.1 * torch.randn(3 * SR, generator=torch.Generator().manual_seed(1))   # 101 frames > max_seq_len
    lp = asr.frame_log_probs(model, wav, window_s=0.9, overlap_s=0.3)          # windows of 30 frames, step 20
    assert lp.shape == (101, ctc.VOCAB_SIZE) and torch.isfinite(lp).all()
    # the first window's frames up to the middle of its overlap come from that window alone
    step = asr.SUBSAMPLE * asr.HOP
    first = asr.frame_log_probs(model, wav[:30 * step + asr.N_FFT], window_s=60)
    assert torch.allclose(lp[:25], first[:25], atol=1e-5)
    last = asr.frame_log_probs(model, wav[80 * step:], window_s=60)            # the last window starts at frame 80
    assert torch.allclose(lp[85:], last[5:], atol=1e-5)                        # after the middle of 80..90
    # a short clip in one window is the plain forward pass
    short = wav[:SR]
    assert torch.allclose(asr.frame_log_probs(model, short), model.posteriors(short)[1], atol=1e-6)
    # too long for one pass without windows: the transformer says so
    with pytest.raises(ValueError, match="max_seq_len"):
        asr.frame_log_probs(model, wav, window_s=60)


def test_align_words_errors_name_the_transcript():
    frames = "--hh-ii--_-tthheerree---"
    wav, model = planned_clip(frames), PlannedASR(frames)
    too_long = "hi there " * 5
    with pytest.raises(ValueError, match=r"'hi there hi there.*' \(44 symbols\) does not fit 0\.69 s of audio "
                                         r"\(24 frames of 30 ms\).*44 symbols need at least 44 frames"):
        asr.align_words(model, wav, too_long)
    with pytest.raises(ValueError, match="holds no word"):
        asr.align_words(model, wav, " ... ?! ")
    with pytest.raises(audio.AudioError, match="too short"):
        asr.align_words(model, wav[:100], "hi")
    with pytest.raises(audio.AudioError, match="mono"):
        asr.align_words(model, torch.zeros(2, 8000), "hi")
