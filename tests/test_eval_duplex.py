"""eval/duplex.py: Full-Duplex-Bench's scoring on hand-made timelines, and dGSLM's timing statistics."""
import numpy as np
import pytest

from nanosdm.eval.duplex import score, summarize, takes_turn, timing_stats

PAUSE = dict(pause_start=2.0, pause_end=3.0, turn_end=4.0)
TURN = dict(turn_end=3.0)
INTERRUPT = dict(reply_start=2.0, interrupt_start=3.0, interrupt_end=4.5)
BACKCHANNEL = dict(reply_start=2.0, backchannel_start=3.0, backchannel_end=3.5, reply_end=5.0)
SILENCE = dict(silence_start=3.0, silence_end=13.0)
EVENTS = dict(pause=PAUSE, turn=TURN, interrupt=INTERRUPT, backchannel=BACKCHANNEL, silence=SILENCE)


def seg(start, end, n_words=None, text="", words=None):
    if words is None and n_words is not None:
        words = [(f"w{i}", start + i * (end - start) / max(1, n_words)) for i in range(n_words)]
    return dict(start=start, end=end, words=words, text=text if words is not None else None)


def run_all(segs_for, answer="red"):
    return {k: [score(k, ev, segs_for(k, ev), answer)] for k, ev in EVENTS.items()}


def test_a_model_that_never_speaks():
    m = summarize(run_all(lambda k, ev: []))
    assert m["duplex_pause_tor"] == 0 and m["duplex_turn_tor"] == 0 and m["duplex_silence_false_start"] == 0
    assert m["duplex_turn_latency_ms"] == -1                          # no turn, no latency
    assert m["duplex_backchannel_continue"] == 0                      # it did not keep talking either
    assert m["duplex_interrupt_answer_acc"] == 0


def test_a_model_that_talks_through_everything():
    m = summarize(run_all(lambda k, ev: [seg(0.0, 30.0, 80, "blah")]))
    assert m["duplex_pause_tor"] == 1 and m["duplex_interrupt_yield"] == 0
    assert m["duplex_interrupt_stop_ms"] == 27000                     # 30 s - the interruption at 3 s
    assert m["duplex_backchannel_continue"] == 1


def test_a_model_that_behaves():
    def behave(kind, ev):
        if kind == "turn":
            return [seg(3.25, 5.0, 4, "the kotan is red.")]
        if kind == "interrupt":
            return [seg(2.0, 3.2, 3, "the kotan"), seg(4.8, 6.5, 5, "the bixu is red.")]
        if kind == "backchannel":
            return [seg(2.0, 5.0, 8, "the kotan belongs to carla.")]
        if kind == "pause":
            return [seg(4.2, 6.0, 4, "the kotan is blue.")]
        return [seg(1.0, 2.9, 4, "the kotan is red.")]                   # silence: the answer before it
    m = summarize(run_all(behave))
    assert m["duplex_pause_tor"] == 0 and m["duplex_turn_tor"] == 1 and m["duplex_turn_latency_ms"] == 250
    assert m["duplex_interrupt_yield"] == 1 and m["duplex_interrupt_stop_ms"] == 200
    assert m["duplex_interrupt_answer_acc"] == 1 and m["duplex_turn_answer_acc"] == 1
    assert m["duplex_backchannel_continue"] == 1 and m["duplex_silence_false_start"] == 0
    # starting early is not an answer at the turn's end, and a wrong value is not a right answer
    r = score("turn", TURN, [seg(2.0, 4.0, 4, "the kotan is blue.")], "red")
    assert not r["took"] and r["early"]
    assert score("turn", TURN, [seg(3.1, 5.0, 4, "the kotan is blue.")], "red")["correct"] is False


def test_one_second_and_three_words_rule_at_its_edges():
    assert not takes_turn(seg(0.0, 0.99, 3))           # under 1 s with 3 words: a backchannel
    assert takes_turn(seg(0.0, 1.0, 3))                # 1 s: a turn
    assert takes_turn(seg(0.0, 0.5, 4))                # 4 words: a turn, however quick
    assert not takes_turn(seg(0.0, 5.0, 0))            # no words: nothing said
    assert not takes_turn(seg(0.0, 0.99)) and takes_turn(seg(0.0, 1.0))   # voiced stretches: length only
    # a backchannel-sized reply in the silence is no false start; a sentence is
    assert not score("silence", SILENCE, [seg(5.0, 5.6, 2, "okay")])["false_start"]
    assert score("silence", SILENCE, [seg(5.0, 6.6, 4, "the kotan is red")])["false_start"]


def test_timing_stats_count_ipus_pauses_gaps_and_overlaps():
    win = 0.02
    a, b = np.zeros(300, bool), np.zeros(300, bool)    # 6 s at 20 ms
    span = lambda x, s, e: x.__setitem__(slice(int(round(s / win)), int(round(e / win))), True)
    span(a, 0.2, 1.0)
    span(a, 1.1, 1.4)          # 0.1 s of silence: the same IPU
    span(b, 1.9, 2.9)          # a gap of 0.5 s, then B
    span(a, 2.7, 3.4)          # A starts before B ends: an overlap of 0.2 s
    span(a, 4.0, 4.6)          # a pause of 0.6 s inside A's speech
    span(b, 5.0, 5.2)          # B's own pause (4.6-5.0 is a gap back to B; B's silences are not counted)
    span(b, 5.5, 5.8)
    st = timing_stats(a, b)
    assert st["ipu"] == pytest.approx([1.2, 0.7, 0.6])   # the measured speaker's (a) IPUs
    assert st["gap"] == pytest.approx([0.5, 0.4]) and st["overlap"] == pytest.approx([0.2])
    assert st["pause"] == pytest.approx([0.6])


def test_scenarios_played_by_two_workers_score_as_by_one():
    # the stage spreads its scenarios over processes; each scenario seeds itself, so a sampled model
    # scores the same whichever worker plays it, and the results come back in the scenarios' order
    pytest.importorskip("espeakng_loader")
    import torch
    from nanosdm.codec import Codec
    from nanosdm.corpus import spokenworld
    from nanosdm.dualstream import DualStream
    from nanosdm.eval import duplex
    from nanosdm.tokenizer import Tokenizer
    world = spokenworld.make_world(20, 0.0, seed=0)
    tok = Tokenizer.train([spokenworld.fact_exchange(__import__("random").Random(i), world[i % 20], "colour", False)["reply"]
                           for i in range(200)], vocab_size=80)
    torch.manual_seed(0)
    model = DualStream(tok.vocab_size, 32, 3, n_layer=1, n_head=2, d_model=32, context=512,
                       depth_layers=1, depth_heads=2, depth_d_model=16).eval()
    codec = Codec(dim=32, sub_dim=16, enc_layers=1, dec_layers=1, sub_layers=1, latent_dim=8, n_q=3, codebook_size=32).eval()
    codec.quantizer.embed.normal_()
    scenarios = [(kind, i == 0, duplex.scenario(kind, 100 * k + i, world, ["en-us+m3"]))
                 for k, kind in enumerate(("turn", "interrupt")) for i in range(2)]
    sampled = (0.8, 20, 0.8, 20)
    one = duplex.play_scenarios(scenarios, model, codec, tok, None, sampled, 0, 7, workers=1, chunk=1)
    two = duplex.play_scenarios(scenarios, model, codec, tok, None, sampled, 0, 7, workers=2, chunk=1)
    assert [o[:2] for o in one] == [t[:2] for t in two]
    assert [o[2] is None for o in one] == [False, True, False, True]          # each kind's first is kept
    assert one[0][2]["text"] == two[0][2]["text"] and torch.equal(one[2][2]["codes"], two[2][2]["codes"])
