import json
import os
import sys

import numpy as np
import pytest
import scipy.io.wavfile
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from nanosdm import asr, codec, units, unitstrain
from nanosdm.corpus import audio, espeak, realdata, speech, spokenworld, windows
from nanosdm.eval import metrics  # noqa: E402

SR = 16000
# LibriSpeech-style: speaker -> (voice, transcripts as LibriSpeech writes them: upper case)
SPEAKERS = {"19": ("en-us", ["WHAT COLOUR IS THE KOTAN", "THE KOTAN IS RED"]),
            "26": ("en-us+m3", ["TELL ME MY NAME", "YOUR NAME IS ANA"]),
            "32": ("en-us+f2", ["WHERE DOES THE BIRD LIVE", "IT LIVES IN PARIS"])}
DIALOGUES = {"call1": [("SPEAKER_MAIN", "hello there, how are you"), ("SPEAKER_OTHER", "i am fine thanks"),
                       ("SPEAKER_MAIN", "good to hear")],
             "call2": [("SPEAKER_OTHER", "what is the time"), ("SPEAKER_MAIN", "it is nine o'clock")]}


def write_librispeech(root):
    """<spk>/<chapter>/<spk>-<chapter>-<utt>.wav with <spk>-<chapter>.trans.txt, eSpeak speaking."""
    for spk, (voice, texts) in SPEAKERS.items():
        chapter = root / spk / "100"
        chapter.mkdir(parents=True)
        lines = []
        for i, text in enumerate(texts):
            wav, _, _ = espeak.synthesize(text.lower(), voice=voice)
            audio.save_wav(chapter / f"{spk}-100-{i:04d}.wav", wav)
            lines.append(f"{spk}-100-{i:04d} {text}")
        (chapter / f"{spk}-100.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def write_moshi(root):
    """Two stereo dialogues (main speaker left) with Moshi-finetune word-timing JSON."""
    root.mkdir(parents=True)
    for name, turns in DIALOGUES.items():
        pieces, words, t = [], [], int(0.3 * SR)
        for who, text in turns:
            wav, timed, _ = espeak.synthesize(text, voice="en-us+f3" if who == "SPEAKER_MAIN" else "en-us+m2")
            pieces.append((0 if who == "SPEAKER_MAIN" else 1, t, wav))
            words += [[w, [round(t / SR + s, 3), round(t / SR + e, 3)], who] for w, s, e in timed]
            t += len(wav) + int(0.4 * SR)
        stereo = np.zeros((2, t), np.float32)
        for ch, s, wav in pieces:
            stereo[ch, s:s + len(wav)] = wav
        audio.save_wav(root / f"{name}.wav", stereo)
        (root / f"{name}.json").write_text(json.dumps({"alignments": words}))
    return root


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return dict(librispeech=str(write_librispeech(root / "ls")), moshi=str(write_moshi(root / "moshi")))


# -----------------------------------------------------------------------------
# the setting, listing, held-out split, mixing, bad files

def test_setting_grammar():
    assert realdata.parse("spokenworld") == [dict(kind="spokenworld", path="", weight=1.0)]
    mix = realdata.parse("spokenworld:0.2,librispeech:/d/ls:0.6,moshi:/d/calls:0.2")
    assert [(s["kind"], s["path"]) for s in mix] == [("spokenworld", ""), ("librispeech", "/d/ls"), ("moshi", "/d/calls")]
    assert [s["weight"] for s in mix] == pytest.approx([0.2, 0.6, 0.2])
    assert [s["weight"] for s in realdata.parse("moshi:/a,librispeech:/b")] == [0.5, 0.5]   # no weights: equal
    assert [s["weight"] for s in realdata.parse("spokenworld:1,moshi:/a:3")] == [0.25, 0.75]
    for bad, why in (("librispeech", "needs a path"), ("spokenworld:/x", "no path"), ("wav:/x", "unknown corpus kind"),
                     ("spokenworld:0.5,moshi:/a", "every corpus"), ("moshi:/a:0", "positive")):
        with pytest.raises(ValueError, match=why):
            realdata.parse(bad)
    assert realdata.is_default({}) and realdata.is_default(dict(speech_data="spokenworld", speech_eval_data=""))
    assert not realdata.is_default(dict(speech_data="moshi:/a"))
    assert train.parse_config([])["speech_data"] == "spokenworld"     # the default is SpokenWorld's old path


def test_listing_and_heldout_speakers(corpora):
    items = realdata.list_items(dict(kind="librispeech", path=corpora["librispeech"]))
    assert len(items) == 6 and {it["speaker"] for it in items} == set(SPEAKERS)
    assert realdata.normalize(items[0]["text"]) == "what colour is the kotan"
    assert all(it["n"] > SR // 2 and it["words"] is None for it in items)   # LibriSpeech has no timings
    train_items, held = realdata.split_heldout(items)
    assert held and train_items and not {i["speaker"] for i in held} & {i["speaker"] for i in train_items}
    turns = realdata.list_items(dict(kind="moshi", path=corpora["moshi"]))
    assert [(t["speaker"], t["channel"]) for t in turns] == [("call1", 0), ("call1", 1), ("call1", 0), ("call2", 1), ("call2", 0)]
    wav = realdata.Reader(2).read(turns[1])                   # one turn, from its own channel only
    t = turns[1]
    assert len(wav) == pytest.approx((t["end"] - t["start"]) * SR, abs=2)
    assert t["words"][0][0] == "i" and 0 < t["words"][0][1] < 0.2      # timings relative to the turn
    _, held = realdata.split_heldout(turns)
    assert len({t["speaker"] for t in held}) == 1                     # a whole dialogue held out
    # speech_eval_data: all of the named corpus is held out, all of speech_data trains
    speech = realdata.Speech(dict(speech_data=f"moshi:{corpora['moshi']}", speech_eval_data=f"librispeech:{corpora['librispeech']}"))
    assert len(speech.mix.parts[0][1]) == 5 and [it["id"] for it in speech.heldout] == [it["id"] for it in items]


def test_a_mix_draws_in_the_stated_proportions():
    parts = [(0.25, [dict(path="a", n=1)] * 3), (0.75, [dict(path="b", n=1)] * 50)]

    class Always(realdata.Reader):
        def read(self, item):
            return torch.ones(10)

    mix = realdata.Mix(parts, Always(2))
    g = torch.Generator().manual_seed(0)
    draws = [mix.sample(g)[0] for _ in range(4000)]
    assert np.mean(np.array(draws) == 0) == pytest.approx(0.25, abs=0.02)
    seq = mix.sequence(1000, seed=0)
    assert sum(it["path"] == "a" for it in seq) == 250           # exact, however small the corpus
    assert realdata.parse("spokenworld:1,moshi:/m:3")[1]["weight"] == 0.75


def test_a_corrupt_file_is_skipped_and_named(corpora, tmp_path, capsys):
    import shutil
    root = tmp_path / "ls"
    shutil.copytree(corpora["librispeech"], root)
    cfg = dict(speech_data=f"librispeech:{root}", seed=0)
    bad, nan = (it["path"] for it in realdata.Speech(cfg).mix.parts[0][1][:2])   # two training files
    open(bad, "wb").write(b"RIFF....not a wav at all")         # found when the corpus is listed
    scipy.io.wavfile.write(nan, SR, np.full(8000, np.nan, np.float32))   # found when it is read
    speech = realdata.Speech(cfg)
    clips = realdata.Clips(speech, 30 * SR, 400, seed=0)
    texts = [clips[i][1] for i in range(len(clips))]              # every clip readable: the bad one replaced
    assert len(texts) == len(clips) and all(texts)
    for i in range(len(clips)):                                   # and its target follows the replacement
        assert clips.targets[i] == realdata.ctc.encode_text(clips[i][1])
    out = capsys.readouterr().out
    assert f"skipped {bad}: not a readable wav file" in out and f"skipped {nan}: every sample is NaN" in out
    assert sorted(speech.reader.bad) == sorted([bad, nan])        # each counted once, however often drawn
    assert out.count(f"skipped {nan}") == 1
    # too many bad files: the stage stops and names them
    reader = realdata.Reader(n_files=10)
    for i in range(realdata.MAX_BAD_FILES):
        assert reader.read(dict(path=str(tmp_path / f"gone{i}.wav"), channel=None, start=None, end=None)) is None
    with pytest.raises(RuntimeError, match="gone0.wav"):
        reader.read(dict(path=str(tmp_path / "gone9.wav"), channel=None, start=None, end=None))


# -----------------------------------------------------------------------------
# every stage that reads single utterances trains on each corpus with only the setting changed

UNITS = dict(units_k=8, units_k_targets=8, units_n_layer=1, units_n_head=2, units_d_model=32, units_layer=1,
             units_proj_dim=16, units_temperature=0.1, units_mask_prob=0.08, units_mask_len=5, units_unmasked_weight=1.0,
             units_warp=0.1, units_warp_knots=1, units_echo=0.0, units_crop_seconds=0.5, units_batch_size=2, units_max_steps=3, units_lr=1e-3,
             units_warmup=1, units_weight_decay=0.0, units_grad_clip=1.0, units_kmeans_iters=3, units_ctc_steps=0, units_ctc_lr=1e-3, units_kmeans_frames=2000,
             units_max_train_hours=0.0, units_ckpt_interval=100, units_targets="canonical")
CODEC = ["--codec_dim=32", "--codec_sub_dim=16", "--codec_enc_layers=1", "--codec_dec_layers=1", "--codec_sub_layers=1",
         "--codec_latent_dim=8", "--codec_n_q=4", "--codec_codebook_size=16", "--codec_batch_size=2",
         "--codec_segment_frames=4", "--codec_max_steps=4", "--codec_vq_start=2", "--codec_init_batches=1",
         "--codec_eval_clips=2", "--codec_distill_weight=0"]
ASR = dict(asr_n_layer=1, asr_n_head=2, asr_d_model=32, asr_dropout=0.0, asr_batch_size=2, asr_max_steps=3, asr_lr=3e-3,
           asr_warmup=1, asr_weight_decay=0.0, asr_grad_clip=1.0, asr_beam=2, asr_ckpt_interval=100,
           asr_scrambled_turns=0, asr_lm_order=3, asr_lm_weight=0.2, asr_char_bonus=2.0)


def run_cfg(tmp_path, setting, **kw):
    cfg = train.parse_config(CODEC)
    cfg.update(UNITS, **ASR)
    cfg.update(device="cpu", seed=0, workers=1, data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"),
               speech_data=setting, **kw)
    return cfg


@pytest.mark.parametrize("kind", ["librispeech", "moshi"])
def test_units_train_on_a_real_corpus(corpora, tmp_path, kind, capsys):
    # canonical targets re-speak the transcripts (the LibriSpeech case checks they arrive); mfcc is quicker
    cfg = run_cfg(tmp_path, f"{kind}:{corpora[kind]}", units_targets="canonical" if kind == "librispeech" else "mfcc")
    figures = unitstrain.train(cfg)
    assert figures["units_train_hours"] > 0 and np.isfinite(figures["units_train_loss"])
    assert units.Units.load(os.path.join(cfg["out_dir"], "units.pt")).encode(torch.zeros(3200)).shape == (10,)
    # every training utterance went in once (held-out speakers or dialogues excluded), cut to whole frames
    speech = realdata.Speech(cfg)
    n = sum(it["n"] // units.HOP for _, items in speech.mix.parts for it in items)
    assert os.path.getsize(os.path.join(cfg["out_dir"], "units_speech.bin")) == 2 * units.HOP * n


@pytest.mark.parametrize("kind", ["librispeech", "moshi"])
def test_codec_trains_and_reports_real_figures(corpora, tmp_path, kind):
    cfg = run_cfg(tmp_path, f"{kind}:{corpora[kind]}")
    assert "codec_train_mel_db" in codec.train(cfg)
    real = metrics.evaluate_codec_real(cfg)
    for key in ("codec_mel_db_real", "codec_si_snr_db_real", "codec_usage_min_real"):
        assert np.isfinite(real[key]), key
    assert real["codec_eval_clips_real"] >= 1


@pytest.mark.parametrize("kind", ["librispeech", "moshi"])
def test_asr_trains_and_reports_real_figures(corpora, tmp_path, kind):
    cfg = run_cfg(tmp_path, f"{kind}:{corpora[kind]}")
    assert asr.train(cfg)["asr_train_loss"] > 0
    real = metrics.evaluate_asr_real(asr.ASR.load(os.path.join(cfg["out_dir"], "asr.pt")), cfg)
    for key in ("asr_cer_real", "asr_wer_real", "asr_wer_lm_real"):
        assert real[key] >= 0, key
    assert real["asr_eval_clips_real"] == (2 if kind == "librispeech" else 3)   # a speaker's 2 files, a dialogue's 3 turns


def test_mixed_streams_draw_windows_in_proportion():
    from nanosdm.dualtrain import get_batch

    class FakeStreams:        # dialogues of 100 frames; a frame's token is its part's tag + its index
        def __init__(self, n, tag):
            self.n, self.tag = n, tag
            self.dialogues = [dict(offset=100 * i, frames=100) for i in range(n // 100)]

        def __len__(self):
            return self.n

        def window(self, start, length):
            assert 0 <= start <= self.n - length
            return (self.tag + np.arange(start, start + length))[:, None].repeat(3, 1)

    mixed = windows.MixedStreams([(0.2, FakeStreams(5000, 0)), (0.8, FakeStreams(500, 10**6))])
    g = torch.Generator().manual_seed(0)
    first = get_batch(mixed, 4000, 20, g, "cpu")[0][:, 0, 0]
    assert (first >= 10**6).float().mean().item() == pytest.approx(0.8, abs=0.03)   # the small part, 80% of windows
    first = get_batch(mixed, 400, 20, g, "cpu", start_frac=1.0)[0][:, 0, 0]
    assert ((first % 10**6) % 100 == 0).all()                  # a dialogue's first frame stays exact


# -----------------------------------------------------------------------------
# stage speech writes the user's corpora as codes; align and sft train on them beside SpokenWorld's

def dual_run(root, setting):
    """make_tiny_run's text LM, codec and SpokenWorld streams, with the setting changed."""
    from test_dualtrain import make_tiny_run
    cfg = make_tiny_run(root)
    cfg.update(ASR, speech_data=setting, align_user_turns=6, align_assistant_turns=2, align_max_steps=2,
               sft_batch_size=2, sft_max_steps=2, sft_ckpt_interval=2, sft_warmup=1, sft_eval_history=8)
    return cfg


def codec_and_tok(cfg):
    from nanosdm.codec import Codec
    from nanosdm.tokenizer import Tokenizer
    return (Codec.load(os.path.join(cfg["out_dir"], "codec.pt")),
            Tokenizer.load(os.path.join(cfg["out_dir"], "tokenizer.model")))


def test_moshi_dialogues_feed_speech_align_and_sft(corpora, tmp_path, capsys):
    from nanosdm import dualstream, dualtrain
    from nanosdm.corpus import speech
    from nanosdm.eval import dialogue
    cfg = dual_run(tmp_path, f"spokenworld:0.5,moshi:{corpora['moshi']}:0.5")
    out = os.path.join(cfg["out_dir"], "speech")
    figures = speech.write_speech(cfg, out, *codec_and_tok(cfg))
    assert {"speech_frames_real", "speech_frames_real_heldout", "speech_frames_align_real",
            "speech_frames_align_real_heldout"} <= set(figures) and figures["speech_frames_real"] > cfg["dual_context"]
    real = speech.Streams(out, "real")
    assert len(real.dialogues) == 1 and real.dialogues[0]["id"] in DIALOGUES   # the other dialogue is held out
    held = speech.Streams(out, "align_real_heldout")
    assert all(tr["speaker"] == "user" for d in held.dialogues for tr in d["turns"])
    assert "align_text_loss" in dualtrain.train(cfg, "align")
    assert "sft_text_loss" in dualtrain.train(cfg, "sft")
    printed = capsys.readouterr().out
    assert "align: SpokenWorld's align 50%, the user's align_real 50%" in printed
    assert "sft: SpokenWorld's train 50%, the user's real 50%" in printed
    model = dualstream.load_model(os.path.join(cfg["out_dir"], "align.pt"))
    wer, pairs = dialogue.user_wer(model, *codec_and_tok(cfg), cfg, split="align_real_heldout")
    assert wer >= 0 and [r for r, _ in pairs] == [tr["text"] for d in held.dialogues for tr in d["turns"]]
    sft = dualstream.load_model(os.path.join(cfg["out_dir"], "sft.pt"))
    onsets = dialogue.evaluate_sft_real(cfg, sft, *codec_and_tok(cfg))
    turns = speech.Streams(out, "real_heldout").dialogues[0]["turns"]
    answered = [(a, b) for a, b in zip(turns, turns[1:]) if a["speaker"] == "user" and b["speaker"] == "assistant"]
    assert onsets["sft_onset_turns_real"] == len(answered) >= 1
    assert onsets["sft_onset_corpus_ms_real"] == round(1000 * float(np.median([b["start"] - a["end"] for a, b in answered])))
    assert {"sft_onset_text_ms_real", "sft_onset_audio_ms_real"} <= set(onsets)


def test_librispeech_feeds_align_through_forced_alignment(corpora, tmp_path, capsys):
    from nanosdm import dualtrain
    from nanosdm.corpus import speech
    cfg = dual_run(tmp_path, f"librispeech:{corpora['librispeech']}")
    out = os.path.join(cfg["out_dir"], "speech")
    figures = speech.write_speech(cfg, out, *codec_and_tok(cfg))     # no recognizer yet: no timings
    assert "skipped: no word timings" in capsys.readouterr().out and figures["speech_frames_align_real"] == 0
    asr.train(cfg)                                                     # the recognizer aligns the transcripts
    figures = speech.write_speech(cfg, out, *codec_and_tok(cfg))
    assert figures["speech_frames_align_real"] > 0 and "speech_frames_real" not in figures   # no dialogues
    d = speech.Streams(out, "align_real").dialogues[0]
    words = [w for tr in d["turns"] for w, _, _ in tr["words"]]
    assert set(words) <= {w for _, texts in SPEAKERS.values() for t in texts for w in t.lower().split()}
    assert "align_text_loss" in dualtrain.train(cfg, "align")
    assert "sft_text_loss" in dualtrain.train(cfg, "sft")             # SpokenWorld's dialogues: nothing else has two channels
    printed = capsys.readouterr().out
    assert "align: SpokenWorld's align 0%, the user's align_real 100%" in printed
    assert "sft: trains on SpokenWorld's split train only: the setting has no two-channel corpus" in printed


def test_codec_crops_read_only_their_stretch(corpora):
    speech = realdata.Speech(dict(speech_data=f"moshi:{corpora['moshi']}"))
    item = speech.mix.parts[0][1][0]
    whole = speech.reader.read(item)
    part = speech.reader.read(realdata._stretch(item, 1000, 5000))
    assert torch.allclose(part, whole[1000:5000], atol=1e-4)
    g = torch.Generator().manual_seed(0)
    x = realdata.Crops(speech).get_batch(3, 8000, g)
    assert x.shape == (3, 8000) and (x.abs().amax(1) > 0.05).all()


def test_the_default_setting_takes_the_old_path(tmp_path, monkeypatch):
    """With speech_data=spokenworld no stage touches realdata's readers: the figures stay the old ones."""
    from test_asr import write_mini_corpus

    def refuse(*a, **k):
        raise AssertionError("realdata called under the default setting")
    for module, name in ((realdata, "Speech"), (realdata, "utterance_stream"), (speech, "write_speech"),
                         (windows, "MixedStreams")):
        monkeypatch.setattr(module, name, refuse)
    write_mini_corpus(tmp_path / "data")
    cfg = dict(ASR, device="cpu", seed=0, data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), workers=1,
               speech_data="spokenworld", speech_eval_data="", asr_scrambled_turns=2)
    asr.train(cfg)
    assert "asr_wer_real" not in metrics.evaluate_asr_checkpoint(cfg)


def test_a_bad_file_drawn_twice_in_an_epoch_is_replaced_both_times(corpora, tmp_path):
    import shutil
    root = tmp_path / "ls"
    shutil.copytree(corpora["librispeech"], root)
    speech = realdata.Speech(dict(speech_data=f"librispeech:{root}"))
    bad = speech.mix.parts[0][1][0]
    scipy.io.wavfile.write(bad["path"], SR, np.full(8000, np.nan, np.float32))
    clips = realdata.Clips(speech, 30 * SR, 400, seed=0)
    clips.items = [bad, bad] + clips.items[2:]
    assert clips[0][1] and clips[1][1] and clips.items[0] is not bad and clips.items[1] is not bad


def test_librispeech_loader(tmp_path):
    chapter = tmp_path / "19" / "198"
    chapter.mkdir(parents=True)
    for i in range(2):
        audio.save_wav(chapter / f"19-198-000{i}.wav", np.zeros(1600, dtype=np.float32) + 0.1)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO WORLD\n19-198-0001 GOOD MORNING\n")
    items = realdata.librispeech_items(tmp_path)
    assert [it["text"] for it in items] == ["hello world", "good morning"]
    assert audio.load_wav(items[0]["path"]).shape == (1600,)
    (chapter / "19-198.trans.txt").write_text("19-198-0002 MISSING FILE\n")
    with pytest.raises(FileNotFoundError, match="19-198-0002.wav"):
        realdata.librispeech_items(tmp_path)


def test_moshi_loader(tmp_path):
    audio.save_wav(tmp_path / "d1.wav", np.zeros((2, 16000), dtype=np.float32))
    align = {"alignments": [["Hello", [0.1, 0.4], "SPEAKER_MAIN"], ["there", [0.45, 0.7], "SPEAKER_MAIN"],
                            ["hi", [0.9, 1.1], "SPEAKER_OTHER"], ["Bye", [1.3, 1.5], "SPEAKER_MAIN"]]}
    (tmp_path / "d1.json").write_text(json.dumps(align))
    (d,) = realdata.moshi_dialogues(tmp_path)
    assert [(t["speaker"], t["text"]) for t in d["turns"]] == [
        ("assistant", "hello there"), ("user", "hi"), ("assistant", "bye")]
    assert d["turns"][0]["start"] == 0.1 and d["turns"][0]["end"] == 0.7
    assert audio.load_wav(d["path"], channel=spokenworld.ASSISTANT).shape == (16000,)
