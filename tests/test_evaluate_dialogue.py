"""The dual-stream evaluation's pieces that need no trained model: the judge and the monologue parser."""
import torch

from nanosdm.corpus import spokenworld
from nanosdm.eval.dialogue import judge, monologue_parts, reply_candidates, voiced_onset
from nanosdm.tokenizer import ASSISTANT, EOS, EPAD, PAD, USER


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


def test_monologue_parts_split_what_was_heard_from_what_was_said():
    ids = [PAD, USER, 10, 11, EPAD, 12, EOS, PAD, PAD, ASSISTANT, 20, PAD, 21, EOS, PAD, 30]
    heard, said = monologue_parts(ids)
    assert heard == [10, 11, 12] and said == [20, 21]


def test_voiced_onset_finds_the_first_loud_window():
    wav = torch.zeros(16000 * 2)
    wav[int(1.3 * 16000):] = 0.5
    assert abs(voiced_onset(wav, 1.0) - 0.3) < 0.021
    assert voiced_onset(torch.zeros(16000), 0.2) is None


def test_qa_batch_hears_the_question_then_silence():
    import numpy as np
    from nanosdm.eval.dialogue import qa_batch

    class FakeStreams:       # one dialogue of 40 frames, K = 2; the user never stops talking
        assistant = np.zeros((40, 2))
        dialogues = [dict(offset=0, frames=40)]

        def window(self, start, length):
            x = np.zeros((length, 5), dtype=np.int64)
            x[:, 3:] = 7                              # the user's codes: 7 everywhere
            return x

    silence = torch.tensor([1, 2])
    q = dict(start=0.8, end=1.6)                      # frames 10 .. 19
    hist, user, starts, ends = qa_batch(FakeStreams(), [(0, q, None)], 4, silence, np.array([0, 1, 2, 1, 2]))
    assert hist.shape == (1, 4, 5) and starts == [10] and ends == [20]
    assert (user[0, :10] == 7).all()                  # the question, as recorded
    assert (user[0, 10:] == silence).all()            # then the user is quiet while the model answers
    assert user.shape[1] == 10 + int(4.0 / 0.08)
