"""The fact-free judge (nanosdm/judge.py): the replies a question allows, the nearest one, scores."""
from nanosdm.corpus import spokenworld
from nanosdm.judge import judge, reply_candidates


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
