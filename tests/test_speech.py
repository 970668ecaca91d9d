"""Stage `speech`: the inner-monologue text stream and the code files, SpokenWorld and real data alike."""
import random
import os

import numpy as np
import pytest
import torch

from nanosdm.corpus import speech, windows
from nanosdm.tokenizer import ASSISTANT, EOS, EPAD, PAD, USER, Tokenizer


@pytest.fixture(scope="module")
def tok():
    texts = [f"the {e} is {c}. what colour is the {e}? hello there, bye." for e in ("kotan", "lomar", "bixu")
             for c in ("red", "blue", "green")] * 20
    return Tokenizer.train(texts, vocab_size=80)


def turn(speaker, text, words):
    return dict(speaker=speaker, text=text, words=[[w, s, e] for w, s, e in words])


def test_text_stream_follows_word_timings_moshi_style(tok):
    # "hello" starts at 0.40 s = frame 5, "there," at 0.81 s = frame 10
    tr = turn("assistant", "hello there,", [("hello", 0.40, 0.70), ("there", 0.81, 1.00)])
    s = speech.text_stream([tr], 20, tok, user_text=False, markers=False)
    hello, there = tok.encode("hello"), tok.encode("there,")
    assert list(s[5:5 + len(hello)]) == hello
    assert list(s[10:10 + len(there)]) == there
    assert s[4] == EPAD and s[9] == EPAD                       # the PAD just before each word
    filled = set(range(4, 5 + len(hello))) | set(range(9, 10 + len(there)))
    assert all(s[i] == PAD for i in range(20) if i not in filled)


def test_words_that_collide_wait_their_turn(tok):
    tr = turn("assistant", "the kotan is red.", [("the", 0.0, 0.1), ("kotan", 0.08, 0.3), ("is", 0.16, 0.2), ("red", 0.5, 0.7)])
    s = speech.text_stream([tr], 30, tok, user_text=False, markers=False)
    ids = [i for i in s if i not in (PAD, EPAD)]
    assert ids == tok.encode("the kotan is red.")          # order kept, nothing lost
    assert s[0] == tok.encode("the")[0] and EPAD not in s[:3]  # no EPAD over a previous word's token


def test_user_words_after_they_are_heard_with_turn_markers(tok):
    user = turn("user", "what colour is the kotan?", [("what", 0.10, 0.30), ("colour", 0.30, 0.60), ("is", 0.62, 0.70),
                                                     ("the", 0.70, 0.80), ("kotan", 0.80, 1.20)])
    reply = turn("assistant", "the kotan is red.", [("the", 2.0, 2.1), ("kotan", 2.1, 2.5), ("is", 2.5, 2.6), ("red", 2.6, 2.9)])
    s = speech.text_stream([user, reply], 60, tok, user_lag=1)
    # a heard word is written once it is heard whole: "what" (0.10-0.30 s, its end in frame 3) is
    # [USER, what] from frame 4; the name "kotan" (one token, ends in frame 15) at frame 16, not
    # while half of it is still to come; then "?" and the user's EOS
    assert s[4] == USER and s[5] == tok.encode("what")[0] and s[3] == EPAD
    end = int(1.20 / speech.FRAME_S)
    assert list(s[end + 1:end + 4]) == tok.encode("kotan?") + [EOS]
    late = speech.text_stream([user, reply], 60, tok)   # the default lag, 2: the user's tokens a frame later, the reply's stay
    assert list(late[end + 2:end + 5]) == tok.encode("kotan?") + [EOS]
    assert [f for f in range(25, 60) if late[f] != PAD] == [f for f in range(25, 60) if s[f] != PAD]
    # the reply's marker the frame before its first word, whose first token starts with its audio
    assert int(np.flatnonzero(s == ASSISTANT)[0]) == int(2.0 / speech.FRAME_S) - 1
    assert s[int(2.0 / speech.FRAME_S)] == tok.encode("the")[0]
    ids = [int(i) for i in s if i not in (PAD, EPAD)]
    # with the PADs removed the stream reads as the text LM's own turn format
    assert ids == tok.encode_turns([["user", user["text"]], ["assistant", reply["text"]]], bos=False)
    assert ids.count(EOS) == 2


def test_an_interrupted_turn_closes_where_the_voice_stops(tok):
    reply = turn("assistant", "the kotan", [("the", 0.0, 0.1), ("kotan", 0.1, 0.5)])
    reply.update(interrupted=True, end=1.3)                    # cut at 1.3 s, after its last whole word
    s = speech.text_stream([reply], 30, tok)
    assert int(np.flatnonzero(s == EOS)[0]) == int(1.3 / speech.FRAME_S)
    turns = speech.read_text_stream(s)
    assert [(t["role"], t["start"], t["end"]) for t in turns] == [(ASSISTANT, 0, int(1.3 / speech.FRAME_S))]


def test_a_backchannel_waits_for_a_gap_and_never_delays_the_answer(tok):
    reply = turn("assistant", "the kotan is red. the lomar is blue.",
                 [("the", 1.0, 1.1), ("kotan", 1.1, 1.6), ("is", 1.6, 1.7), ("red", 1.7, 2.4),
                  ("the", 2.6, 2.7), ("lomar", 2.7, 3.2), ("is", 3.2, 3.3), ("blue", 3.3, 3.9)])
    backchannel = turn("user", "hello there,", [("hello", 1.5, 1.8), ("there", 1.8, 2.0)])
    alone = speech.text_stream([reply], 60, tok)
    s = speech.text_stream([reply, backchannel], 60, tok)
    # every token of the answer where it is without the backchannel: its words keep time with its audio
    kept = [f for f in range(60) if alone[f] not in (PAD, EPAD)]
    assert [int(s[f]) for f in kept] == [int(alone[f]) for f in kept]
    user = [f for f in range(60) if s[f] not in (PAD, EPAD) and alone[f] in (PAD, EPAD)]
    assert s[user[0]] == USER and s[user[-1]] == EOS and user[0] >= int(1.5 / speech.FRAME_S)
    assert not any(alone[f] not in (PAD, EPAD) for f in range(user[0], user[-1] + 1))   # written whole, in a gap
    turns = speech.read_text_stream(s)
    assert [t["role"] for t in turns] == [ASSISTANT, USER]
    assert [i for _, i in turns[0]["tokens"]] == [i for i in tok.encode(reply["text"])]   # nothing of the user's in it
    assert [i for _, i in turns[1]["tokens"]] == tok.encode("hello") + tok.encode("there,")


def test_read_text_stream_nests_a_backchannel_inside_the_answer(tok):
    the, red, uh = tok.encode("the")[0], tok.encode("red")[0], tok.encode("hello")[0]
    ids = [PAD, ASSISTANT, the, PAD, USER, uh, EOS, red, EOS, PAD, USER, uh]
    turns = speech.read_text_stream(ids)
    assert [(t["role"], t["start"], t["end"]) for t in turns] == [(ASSISTANT, 1, 8), (USER, 4, 6), (USER, 10, None)]
    assert [i for _, i in turns[0]["tokens"]] == [the, red]    # the answer goes on after the backchannel
    assert turns[0]["tokens"][1] == (7, red)




def test_the_units_ear_needs_units_that_stream(tmp_path):
    """dual_ear=units reads out/<preset>/units.pt; bidirectional units cannot run 80 ms at a time."""
    import torch
    from nanosdm import units, utils
    enc = units.HubertEncoder(n_targets=10, n_layer=2, n_head=2, d_model=32, proj_dim=8)
    utils.save_checkpoint(str(tmp_path / "units.pt"), dict(config=enc.config, model=enc.state_dict(), layer=1,
                                                            centroids=torch.randn(12, 32), finished=True))
    cfg = dict(dual_ear="units", out_dir=str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="units_causal=True"):
        speech.load_ear(cfg)
    assert speech.load_ear(dict(cfg, dual_ear="codec")) is None
    with pytest.raises(ValueError, match="'codec' or 'units'"):
        speech.load_ear(dict(cfg, dual_ear="mel"))


def test_only_the_training_splits_hear_a_stretched_voice():
    rng = random.Random(0)
    for split in ("val", "unseen_voice", "text_only"):
        assert speech.ear_stretch(rng, split, 0.15) == 1.0
    train = [speech.ear_stretch(rng, split, 0.15) for split in ("train", "align") for _ in range(200)]
    assert 0.85 <= min(train) < 0.9 and 1.1 < max(train) <= 1.15
    assert speech.ear_stretch(rng, "train", 0.0) == 1.0


def test_timed_text_lays_text_dialogues_out_as_spoken_ones(tok):
    docs = [[["user", "what colour is the kotan?"], ["assistant", "the kotan is red."]],
            [["user", "what colour is the bixu?"], ["assistant", "the bixu is blue."], ["user", "bye."], ["assistant", "bye."]]]
    s, heard = speech.timed_text(docs, tok, random.Random(0))
    assert s.dtype == np.uint16 and np.array_equal(s, speech.timed_text(docs, tok, random.Random(0))[0])
    turns = speech.read_text_stream([int(i) for i in s])
    # the user's turns, marker to EOS, are context only (heard); the replies are targets
    for t in turns:
        assert heard[t["start"]:t["end"] + 1].all() == (t["role"] == USER) and heard[t["start"]:t["end"] + 1].any() == (t["role"] == USER)
    assert [t["role"] for t in turns] == [USER, ASSISTANT, USER, ASSISTANT, USER, ASSISTANT]
    for t, (_, text) in zip(turns, [tr for d in docs for tr in d]):
        assert [i for _, i in t["tokens"]] == tok.encode(text) and t["end"] is not None
    # spoken at eSpeak's pace: ~0.3 s a word and a pause between turns, never a text LM's one token a frame
    words = sum(len(text.split()) for d in docs for _, text in d)
    assert 0.2 < len(s) * speech.FRAME_S / words < 1.0
    assert (s == PAD).mean() > 0.5
    # the reply's marker comes after the user's EOS: the model answers what it heard whole
    assert all(a["start"] > u["end"] for u, a in zip(turns[::2], turns[1::2]))
    # prose and empty turns are skipped; a corpus with no dialogue at all is refused by name
    prose = [[["text", "the kotan is red."]], [["user", "what colour is the kotan?"], ["assistant", ""]]]
    s2, _ = speech.timed_text(prose, tok, random.Random(0))
    assert [t["role"] for t in speech.read_text_stream([int(i) for i in s2])] == [USER]
    with pytest.raises(ValueError, match="no user/assistant dialogue"):
        speech.timed_text(prose[:1], tok, random.Random(0))


def test_sft_listens_to_a_share_of_aligns_user_turns(tmp_path):
    from nanosdm.dualstream import DualStream
    from nanosdm.dualtrain import get_batch, listen_only
    K = 2
    out = str(tmp_path / "speech")
    for split, parts in (("train", [("both", 60)]), ("align", [("user", 40), ("assistant", 30), ("user", 35)])):
        w = speech.StreamWriter(out, split)
        for n, (who, frames) in enumerate(parts):
            speakers = ["user", "assistant"] if who == "both" else [who]
            tag = {"train": 1000, "align": 2000 + 100 * n}[split]     # a frame's tokens say where they come from
            w.add(dict(id=f"{split}-{n}", turns=[dict(speaker=sp) for sp in speakers]),
                  np.full(frames, tag, dtype=np.uint16), np.full((2, frames, K), tag % 256, dtype=np.uint16))
        w.close()
    cfg = dict(out_dir=str(tmp_path), speech_data="spokenworld", sft_align_frac=0.25)
    assert isinstance(windows.mixed_streams(dict(cfg, sft_align_frac=0.0), "sft", out), speech.Streams)
    assert windows.mixed_streams(cfg, "align", out).split == "align"          # sft's setting only
    mixed = windows.mixed_streams(cfg, "sft", out)
    (_, n_train), (at, n_listen) = mixed.spans
    assert n_listen / (n_train + n_listen) == pytest.approx(0.25, abs=0.02)
    listening = mixed.parts[1][1]
    assert len(listening) == 75                                            # the user-only dialogues only
    # its windows stay inside one user-only dialogue, never in the assistant's
    tags = {int(listening.window(s, 20)[:, 0].max()) for s in range(75)}
    assert tags == {2000, 2200}
    assert not mixed.listening(0) and mixed.listening(at)
    x, listen = get_batch(mixed, 400, 4, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(listen, x[:, 0, 0] >= 2000) and 0.15 < listen.float().mean() < 0.35
    # in a listened window the model's own audio and its text's PADs teach nothing; elsewhere all do
    model = DualStream(VOCAB, 16, K, n_layer=1, n_head=2, d_model=16, context=32, depth_layers=1, depth_heads=2,
                       depth_d_model=16)
    y = torch.randint(10, 16, (2, 20, 1 + 2 * K))     # ids above the specials
    y[:, ::2, 0] = PAD
    masked = listen_only(model, y, torch.tensor([True, False]))
    assert torch.equal(masked[1], y[1]) and torch.equal(masked[0, :, 1 + K:], y[0, :, 1 + K:])
    assert (masked[0, :, 1:1 + K] == 16).all()                             # INIT: nothing to predict
    assert (masked[0, ::2, 0] == VOCAB).all() and torch.equal(masked[0, 1::2, 0], y[0, 1::2, 0])


VOCAB = 50
