"""CTC recognizer: decoding, the loss, a short training run, bad input (error rates: test_evaluate.py)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanosdm import audio, ctc, espeak, utils

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


def one_hot_log_probs(frames, floor=1e-4):
    """Frames given as symbols ('-' = blank) -> log-probs [T, VOCAB_SIZE], nearly one-hot."""
    p = torch.full((len(frames), ctc.VOCAB_SIZE), floor)
    for t, c in enumerate(frames):
        p[t, ctc.BLANK if c == "-" else ids(c)[0] if c != " " else 1] = 1.0
    return (p / p.sum(-1, keepdim=True)).log()


# -----------------------------------------------------------------------------
# text

def test_normalize_and_alphabet():
    assert ctc.normalize_text("  Hello, World!  It's 42. ") == "hello world it's 42"
    assert ctc.normalize_text("uh-huh...") == "uh huh"
    assert ctc.decode_ids(ids("what's 2 plus 2")) == "what's 2 plus 2"
    assert ctc.VOCAB_SIZE == 39 and min(ids("a z")) >= 1  # 0 stays the blank


# -----------------------------------------------------------------------------
# decoding

def test_greedy_decoding_hand_made_posteriors():
    # repeats merge, blanks vanish, a blank between two l's keeps both
    lp = one_hot_log_probs("--hh-e-ll-l--oo- ")
    assert ctc.decode_ids(ctc.greedy_decode(lp[None])[0]) == "hello "
    # lengths cut the padded frames of a batch
    batch = torch.stack([one_hot_log_probs("-a-b-c"), one_hot_log_probs("-a-bbb")])
    out = ctc.greedy_decode(batch, torch.tensor([6, 3]))
    assert [ctc.decode_ids(o) for o in out] == ["abc", "a"]


def test_prefix_beam_search():
    # peaky posteriors: beam search agrees with greedy
    lp = one_hot_log_probs("--hh-e-ll-l--oo-")
    assert ctc.decode_ids(ctc.prefix_beam_search(lp, beam=4)) == "hello"
    # the classic case where the best path is not the best labelling: two frames with
    # p(blank) = 0.6, p(a) = 0.4. Greedy says "" (0.36); "a" sums aa, a-, -a = 0.64.
    p = torch.full((2, ctc.VOCAB_SIZE), 1e-9)
    p[:, ctc.BLANK], p[:, ids("a")[0]] = 0.6, 0.4
    lp = p.log()
    assert ctc.greedy_decode(lp[None])[0] == []
    assert ctc.decode_ids(ctc.prefix_beam_search(lp, beam=4)) == "a"


def test_char_lm_is_a_distribution_and_learns_spellings():
    lm = ctc.CharLM(["the keter is red", "the keter is blue", "the lezis is red"], order=4)
    for history in ("", "the ke", "zzzz", "the lezis is red"):
        assert abs(np.exp(lm.log_probs(history)).sum() - 1) < 1e-9
    lp = lm.log_probs("the ket")
    assert lp.argmax() == ids("e")[0] and lp[ids("e")[0]] > np.log(0.9)
    assert lm.log_probs("the keter is red").argmax() == ctc.CharLM.END
    # an unseen context backs off to shorter ones: never a zero probability
    assert np.isfinite(lm.log_probs("qqqq")).all()
    state = ctc.CharLM.from_state_dict(lm.state_dict())
    assert np.allclose(state.log_probs("the le"), lm.log_probs("the le"))


def test_beam_search_with_lm_fixes_an_ambiguous_vowel():
    # "kat?r": the acoustics prefer "a" over "e" (0.55 vs 0.45); the LM has only read "keter"
    frames = ["k", "-", "e|a", "-", "t", "-", "e", "-", "r", "-"]
    p = torch.full((len(frames), ctc.VOCAB_SIZE), 1e-6)
    for t, f in enumerate(frames):
        if f == "-":
            p[t, ctc.BLANK] = 1.0
        elif f == "e|a":
            p[t, ids("a")[0]], p[t, ids("e")[0]] = 0.55, 0.45
        else:
            p[t, ids(f)[0]] = 1.0
    lp = (p / p.sum(-1, keepdim=True)).log()
    assert ctc.decode_ids(ctc.prefix_beam_search(lp, beam=4)) == "kater"
    lm = ctc.CharLM(["the keter is red"] * 5, order=4)
    assert ctc.decode_ids(ctc.prefix_beam_search(lp, beam=4, lm=lm, lm_weight=0.3, char_bonus=1.0)) == "keter"


# -----------------------------------------------------------------------------
# the loss

def test_forward_algorithm_matches_f_ctc_loss():
    torch.manual_seed(0)
    lp = torch.randn(12, 6, dtype=torch.float64).log_softmax(-1)
    for target in ([1, 2, 3], [2, 2, 4], [5], [3, 3, 3, 3]):
        ref = F.ctc_loss(lp[:, None], torch.tensor([target]), torch.tensor([12]), torch.tensor([len(target)]),
                         reduction="sum")
        assert ctc.ctc_nll(lp, target).item() == pytest.approx(ref.item(), rel=1e-9)


def test_model_loss_matches_f_ctc_loss():
    torch.manual_seed(0)
    model = ctc.ASR(n_layer=1, n_head=2, d_model=32, dropout=0.0).eval()
    wav = torch.randn(3, 8000) * 0.1
    lengths = torch.tensor([8000, 6000, 4000])
    targets = [ids("abc"), ids("hello"), ids("x y")]
    feat, flen = ctc.features(wav, lengths)
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
    model = ctc.ASR(n_layer=2, n_head=2, d_model=32, dropout=0.0).eval()
    a, b = torch.randn(7000) * 0.1, torch.randn(12000) * 0.1
    x, lengths = ctc.pad_batch([a, b])
    lp, out_len = model(*ctc.features(x, lengths))
    lp_a, n_a = model(*ctc.features(a[None], torch.tensor([7000])))
    assert out_len[0] == n_a[0]
    torch.testing.assert_close(lp[0, :n_a[0]], lp_a[0], atol=1e-4, rtol=1e-4)


def test_spec_augment_masks_bands_and_spans():
    feat = torch.ones(2, ctc.N_MELS, 300)
    out = ctc.spec_augment(feat, torch.tensor([300, 300]), torch.Generator().manual_seed(0))
    zero_bands = (out == 0).all(-1).sum().item()
    zero_frames = (out == 0).all(1).sum().item()
    assert 0 < zero_bands and 0 < zero_frames
    assert (out == 0).float().mean() < 0.5 and feat.eq(1).all()  # the input is left alone


# -----------------------------------------------------------------------------
# a short training run, transcribe, load, errors

def test_short_training_run_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    texts = ["the red ball", "a blue cat", "the green hat", "a pink dog"]
    clips = [(espeak.synthesize(t, voice=v)[0], t) for t in texts for v in ("en-us", "en-us+m3")]
    x, lengths = ctc.pad_batch([torch.from_numpy(w) for w, _ in clips])
    targets = [ids(t) for _, t in clips]
    model = ctc.ASR(n_layer=1, n_head=2, d_model=64, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    feat, flen = ctc.features(x, lengths)
    losses = []
    for step in range(60):
        loss = model.loss(feat, flen, targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < 2.0, losses[::10]

    path = tmp_path / "asr.pt"
    utils.save_checkpoint(str(path), dict(model=model.state_dict(), config=model.config))
    asr = ctc.ASR.load(str(path))
    single = asr.transcribe(torch.from_numpy(clips[0][0]))
    batch = asr.transcribe([torch.from_numpy(w) for w, _ in clips[:3]])
    assert isinstance(single, str) and isinstance(batch, list) and len(batch) == 3
    assert batch[0] == single  # batched and alone agree
    assert set(single) <= set(ctc.CHARS)


def test_long_audio_is_cut_at_silences():
    sr = SR
    burst = lambda s: torch.randn(int(s * sr)) * 0.3
    quiet = lambda s: torch.zeros(int(s * sr))
    wav = torch.cat([burst(3.0), quiet(0.5), burst(4.0), quiet(0.5), burst(2.5)])  # 10.5 s
    pieces = ctc.split_on_silence(wav, max_s=5.0, min_s=1.0)
    assert sum(len(p) for p in pieces) == len(wav)
    assert all(len(p) <= 5 * sr for p in pieces) and len(pieces) == 3
    # the cuts fall inside the two quiet stretches
    cuts = np.cumsum([len(p) for p in pieces])[:-1] / sr
    assert 3.0 <= cuts[0] <= 3.5 and 7.5 <= cuts[1] <= 8.0


def test_bad_input_gives_clear_errors(tmp_path):
    model = ctc.ASR(n_layer=1, n_head=2, d_model=32)
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
    """Two-channel SpokenWorld-format splits of a few eSpeak sentences (see nanosdm/data.py)."""
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
    assert ctc.train(cfg, stop_step=3) == {}  # "killed" after 3 steps: a partial checkpoint
    ckpt = utils.load_checkpoint(str(tmp_path / "out" / "asr.pt"))
    assert ckpt["step"] == 3 and len(ckpt["history"]["train"]) == 3
    metrics = ctc.train(cfg)
    assert "resuming from" in capsys.readouterr().out
    assert utils.load_checkpoint(str(tmp_path / "out" / "asr.pt"))["step"] == 6
    for key in ("asr_cer", "asr_wer", "asr_wer_beam", "asr_wer_lm", "asr_wer_heldout_phrasing", "asr_train_loss"):
        assert isinstance(metrics[key], float) and metrics[key] >= 0
    assert metrics["asr_eval_clips"] == 2 and "asr_wer_codec" not in metrics  # no codec here
    assert (tmp_path / "out" / "plots" / "asr_posteriors.png").stat().st_size > 10_000
    # the character LM travels with the recognizer
    model = ctc.ASR.load(str(tmp_path / "out" / "asr.pt"))
    assert model.lm is not None and model.lm.order == cfg["asr_lm_order"] and model.lm_weight == cfg["asr_lm_weight"]
