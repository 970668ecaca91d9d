"""CTC: the alphabet, transcripts, greedy and beam decoding, the character LM, the loss written out,
forced alignment."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanosdm import ctc


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


def test_normalize_transcript_to_spoken_words():
    n = ctc.normalize_transcript
    assert n("HE PAID $42 FOR THE 1ST ONE.") == "he paid forty two dollars for the first one"
    assert n("In 1984, the 21st; 2007 and 1900.") == \
        "in nineteen eighty four the twenty first two thousand seven and nineteen hundred"
    assert n("1805 1,000,000 3.14 007 100% 12th 40th 2nd 3rd 101 the 1990s") == (
        "eighteen oh five one million three point one four zero zero seven one hundred percent "
        "twelfth fortieth second third one hundred one the nineteen nineties")
    # unicode quotes and dashes, accents, hyphens; apostrophes only inside words
    assert n("It\u2019s \u201cgreat\u201d\u2014really, Caf\u00e9 well-known 'hello' dogs' rock'n'roll") == \
        "it's great really cafe well known hello dogs rock'n'roll"
    assert n("  ?!  ") == "" and n("1,2,3 & 5kg") == "one two three and five kg"
    assert n("\u2116 5 \u00c6SOP \u00c9cole") == "no five aesop ecole"   # compatibility forms, ligatures, accents
    # the result is always in the alphabet, and has no digits left
    out = n("Mr. O'Brien, 24/7: \u00bd \u2116 5 \u00c6sop \u4e2d\u6587 tab\tnew\nline")
    assert set(out) <= set(ctc.CHARS) and not any(c.isdigit() for c in out) and "  " not in out
    assert ctc.decode_ids(ctc.encode_text(out)) == out


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


# -----------------------------------------------------------------------------
# forced alignment

def test_forced_align_recovers_a_hand_made_path():
    # "hello": the doubled l needs the blank between them; leading, inner and trailing blanks
    frames = "--hh-e-ll-l--oo-"
    spans, score = ctc.forced_align(one_hot_log_probs(frames), ids("hello"))
    assert spans.tolist() == [[2, 4], [5, 6], [7, 9], [10, 11], [13, 15]]
    assert score == pytest.approx(one_hot_log_probs(frames).max(-1).values.sum().item(), abs=1e-4)
    # with spaces as labels, and a path that starts and ends on a symbol
    spans, _ = ctc.forced_align(one_hot_log_probs("hi  -yo"), ids("hi yo"))
    assert spans.tolist() == [[0, 1], [1, 2], [2, 4], [5, 6], [6, 7]]
    # the audio says "hello" but the transcript is "help": the path still spells "help"
    spans, _ = ctc.forced_align(one_hot_log_probs(frames), ids("help"))
    assert spans[:, 0].tolist() == sorted(spans[:, 0].tolist()) and (spans[:, 1] > spans[:, 0]).all()


def test_forced_align_is_the_best_path():
    # against every frame labelling of a small vocabulary that collapses to the target
    import itertools
    rng = np.random.default_rng(0)
    for _ in range(12):
        T, C = int(rng.integers(3, 7)), 4
        target = rng.integers(1, C, size=int(rng.integers(1, 4))).tolist()
        lp = torch.randn(T, C, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30)))).log_softmax(-1)
        best, best_path = -math.inf, None
        for path in itertools.product(range(C), repeat=T):
            if ctc.collapse(list(path), ctc.BLANK) == target:
                score = float(sum(lp[t, k] for t, k in enumerate(path)))
                best, best_path = max((best, best_path), (score, path))
        if best_path is None:
            with pytest.raises(ValueError, match="frames"):
                ctc.forced_align(lp, target)
            continue
        spans, score = ctc.forced_align(lp, target)
        assert score == pytest.approx(best, abs=1e-5)
        # the spans rebuild a path of that score
        path = [ctc.BLANK] * T
        for k, (a, b) in zip(target, spans.tolist()):
            path[a:b] = [k] * (b - a)
        assert ctc.collapse(path, ctc.BLANK) == target
        assert float(sum(lp[t, k] for t, k in enumerate(path))) == pytest.approx(best, abs=1e-5)
        # and the best path is at most the sum over all paths
        assert score <= -ctc.ctc_nll(lp, target).item() + 1e-6


def test_forced_align_errors_are_clear():
    lp = one_hot_log_probs("-ab-")
    with pytest.raises(ValueError, match="3 symbols need at least 3 frames"):   # fits exactly
        ctc.forced_align(one_hot_log_probs("ab"), ids("abc"))
    with pytest.raises(ValueError, match="3 symbols need at least 4 frames, the audio gives 3"):
        ctc.forced_align(one_hot_log_probs("abc"), ids("abb"))                # "bb" needs a blank between
    assert ctc.forced_align(one_hot_log_probs("ab-b"), ids("abb"))[0].tolist() == [[0, 1], [1, 2], [3, 4]]
    with pytest.raises(ValueError, match=r"target ids \[0, 99\]"):
        ctc.forced_align(lp, [3, 0, 99])


# -----------------------------------------------------------------------------
# LLaMA-Omni's speech decoder: CTC over units

def test_upsample_lengths_and_the_lambda_error():
    states = torch.randn(2, 3, 4)
    up, lengths = ctc.upsample(states, torch.tensor([3, 2]), 5)
    assert up.shape == (2, 15, 4) and lengths.tolist() == [15, 10]
    assert torch.equal(up[:, 5:10], states[:, 1:2].expand(-1, 5, -1))     # state i fills lam i .. lam i + lam - 1
    ctc.upsample(states, torch.tensor([3, 2]), 5, target_lengths=torch.tensor([15, 10]))   # exactly enough
    with pytest.raises(ValueError, match="lambda=5 x 2 text tokens = 10 positions < 11 units"):
        ctc.upsample(states, torch.tensor([3, 2]), 5, target_lengths=torch.tensor([4, 11]))


def test_collapse():
    assert ctc.collapse([7, 7, 9, 7, 3, 3, 9], blank=9) == [7, 7, 3]
    assert ctc.collapse([9, 9], blank=9) == [] and ctc.collapse([1, 2, 2, 1], blank=9) == [1, 2, 1]


def test_streamed_units_equal_offline_units():
    torch.manual_seed(0)
    dec = ctc.SpeechDecoderCTC(in_dim=8, n_units=6, lam=4, n_layer=1, n_head=2, d_model=16).eval()
    # random weights emit few units; a large head makes the greedy path busy
    torch.nn.init.normal_(dec.head.weight, std=2.0)
    states = torch.randn(9, 8)
    offline = dec.units(states[None])[0]
    streamed = []
    for i in range(1, len(states) + 1):           # after each new text token
        streamed += dec.stream(states[:i], len(streamed))
    assert streamed == offline and len(offline) > 5


def test_short_training_lowers_the_ctc_loss():
    torch.manual_seed(0)
    dec = ctc.SpeechDecoderCTC(in_dim=8, n_units=6, lam=4, n_layer=1, n_head=2, d_model=16)
    states = torch.randn(4, 5, 8)
    lengths = torch.tensor([5, 5, 4, 3])
    targets = [torch.tensor(t) for t in ([1, 2, 3, 4, 5, 1, 2], [0, 1, 0, 1], [5, 4, 3], [2, 2, 2, 0])]
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = dec.loss(states, lengths, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
