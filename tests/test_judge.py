"""The fact-free judge (nanosdm/judge.py): the replies a question allows, the nearest one, scores."""
import math

import torch

from nanosdm.corpus import spokenworld
from nanosdm.judge import VAD_WIN, judge, judge_wavs, reply_candidates, trim


def test_reply_candidates_cover_every_kind_of_question():
    c = dict(reply_candidates("what colour is the kotan?"))
    assert set(c) == set(spokenworld.COLOURS) | {None} and c["red"] == "the kotan is red." and c[None] == "the kotan is ."
    held = dict(reply_candidates("please name the owner of the lezis."))    # a held-out frame
    assert set(held) == set(spokenworld.PEOPLE) | {None} and held["iris"] == "the lezis belongs to iris."
    assert dict(reply_candidates("how much is three plus four?"))["seven"] == "three plus four is seven."
    assert set(dict(reply_candidates("what is my name?"))) == set(spokenworld.PEOPLE) | {None}
    assert set(dict(reply_candidates("do you remember where i live?"))) == set(spokenworld.TOWNS) | {None}
    assert reply_candidates("sing me a song") == []


def test_judge_takes_the_nearest_allowed_reply_and_nothing_else():
    q = "what colour is the kotan?"
    assert judge("the kotan is red", q, "red")
    assert judge("the kodan is bred", q, "red")          # misheard, still nearest to red
    assert not judge("the kotan is blue", q, "red")
    assert not judge("", q, "red")                       # silence is never right
    # a reply that stops before its value is nearest to the reply with no value
    assert not judge("the kotan is", q, "red")
    # equally near two replies: not counted (no coin flips in the judge's favour)
    assert not judge("the kotan is gree", q, "green")      # one edit from green and from grey
    assert judge("the kotan is greeen", q, "green")
    assert not judge("zzz qqq", q, "red")                    # nothing like any allowed reply


def test_scores_pick_among_the_plausible_replies_only():
    q = "what colour is the kotan?"
    values = [v for v, _ in reply_candidates(q)]
    scores = [0.0] * len(values)
    scores[values.index("green")] = 5.0
    assert judge("the kotan is gree", q, "green", scores)   # the tie broken by the acoustic score
    assert not judge("the kotan is gree", q, "grey", scores)
    scores[values.index("purple")] = 50.0                    # far from the transcript: not plausible
    assert judge("the kotan is gree", q, "green", scores)
    scores[values.index(None)] = 60.0                        # the reply without a value wins: wrong
    assert not judge("the kotan is", q, "red", scores)
    assert judge("the bixu has seven legs", "how many legs does the bixu have?", "seven")


class SpellingASR:
    """A stand-in recognizer that hears `text` in any clip, and records the clips it was given:
    CTC posteriors with one character per 3 frames, blanks between."""

    def __init__(self, text):
        self.text, self.heard = text, []

    def posteriors(self, wav):
        from nanosdm import ctc
        self.heard.append(len(wav))
        ids = ctc.encode_text(self.text)
        lp = torch.full((3 * len(ids) + 1, ctc.VOCAB_SIZE), -20.0)
        lp[:, ctc.BLANK] = 0.0
        for i, c in enumerate(ids):
            lp[3 * i + 1] = -20.0
            lp[3 * i + 1, c] = 0.0
        return None, lp


def speech_in_silence(before_s, speech_s, after_s):
    sr = 16000
    t = torch.arange(int(speech_s * sr)) / sr
    return torch.cat([torch.zeros(int(before_s * sr)), 0.3 * torch.sin(2 * math.pi * 220 * t), torch.zeros(int(after_s * sr))])


def test_the_judge_hears_only_the_voiced_stretch_of_a_clip():
    """The recognizer normalises a clip over all its frames, so seconds of silence around a reply
    garbled it: the judge cuts a clip to its voiced stretch (and a margin) before hearing it."""
    wav = speech_in_silence(2.0, 1.0, 3.0)
    assert abs(len(trim(wav)) - (1.0 + 2 * 0.1) * 16000) <= VAD_WIN
    assert torch.equal(trim(torch.zeros(8000)), torch.zeros(8000))     # silence stays as it is
    right = SpellingASR("the kotan is red")
    oks, heard = judge_wavs(right, [wav], ["what colour is the kotan?"], ["red"])
    assert oks == [True] and heard == ["the kotan is red"]
    assert abs(right.heard[0] - 1.2 * 16000) <= VAD_WIN               # what the recognizer was given
    wrong = SpellingASR("the kotan is blue")                            # a wrong answer is still refused
    assert judge_wavs(wrong, [wav], ["what colour is the kotan?"], ["red"])[0] == [False]
