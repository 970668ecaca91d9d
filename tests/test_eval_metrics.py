"""The results table's metrics: unit quality (PNMI, purity) and the phone labels it is measured
against, log-mel distance, SI-SNR, delay alignment, codebook usage, phone information, the codec2
anchor, and character and word error rates."""
import math

import pytest
import torch

from nanosdm.corpus import espeak
from nanosdm.eval import metrics


@pytest.fixture(scope="module")
def speech():
    """One eSpeak sentence as a batch of one, 16 kHz."""
    return torch.from_numpy(espeak.synthesize("the green cat lives in paris.", voice="en-us")[0])[None]


def test_pnmi_and_purity_bounds():
    g = torch.Generator().manual_seed(0)
    phones = torch.randint(20, (50000,), generator=g)
    perfect = metrics.unit_quality(phones * 3 + torch.randint(3, (50000,), generator=g), phones, 60, 20)
    assert abs(perfect["pnmi"] - 1) < 1e-6 and abs(perfect["phone_purity"] - 1) < 1e-6
    assert abs(perfect["cluster_purity"] - 1 / 3) < 0.02       # each phone spread over 3 units
    chance = metrics.unit_quality(torch.randint(60, (50000,), generator=g), phones, 60, 20)
    assert chance["pnmi"] < 0.02 and chance["phone_purity"] < 0.1


def test_frame_phones_strips_stress_and_leaves_pauses_empty():
    phones = [["h", 0.0, 0.045], ["\u02c8\u025b", 0.045, 0.125], ["l", 0.195, 0.255]]
    labels = metrics.frame_phones(phones, 15)                 # frame centres at 10, 30, 50, ... ms
    assert labels[:6] == ["h", "h", "\u025b", "\u025b", "\u025b", "\u025b"]
    assert labels[6:10] == [None] * 4 and labels[10:13] == ["l"] * 3 and labels[13:] == [None, None]


def test_metrics():
    torch.manual_seed(7)
    x = torch.randn(16000) * 0.1
    assert metrics.mel_distance_db(x, x) == 0.0
    assert metrics.mel_distance_db(x, 0.5 * x) == pytest.approx(20 * math.log10(2), abs=0.05)
    assert metrics.si_snr_db(x, 0.5 * x) > 60                        # scale-invariant
    assert metrics.si_snr_db(x, x + 0.1 * torch.randn(16000) * 0.1) == pytest.approx(20, abs=0.5)
    delayed = torch.cat([torch.zeros(320), x])
    assert metrics.best_delay([x], [delayed]) == 320
    usage, counts = metrics.codebook_usage(torch.tensor([[0, 1], [1, 1], [2, 1], [3, 1]]), 4)
    assert usage == pytest.approx([1.0, 0.25]) and counts.sum() == 8


def test_phone_information():
    # four 80 ms codes, one phone each: codebook 0 names the phone, codebook 1 tells nothing
    phones = [[ph, 0.08 * i, 0.08 * (i + 1)] for i, ph in enumerate("abab")]
    codes = torch.tensor([[[0, 1, 0, 1], [3, 3, 3, 3]]])
    info = metrics.phone_information([codes], [phones], 4, frame=1280)
    assert info["codec_pnmi_q0"] == pytest.approx(1.0) and info["codec_pnmi_q1"] == pytest.approx(0.0, abs=1e-6)


def test_codec2_anchor(speech):
    pytest.importorskip("pycodec2")
    for mode in (1200, 700):
        out = metrics.codec2_roundtrip(speech[0], mode)
        assert abs(len(out) - len(speech[0])) < 640
        d = metrics.best_delay([speech[0]], [out])
        assert 3 < metrics.mel_distance_db(speech[0], metrics.align(out, d, speech.shape[1]), 40, 4000) < 12


def test_error_rates_known_cases():
    assert metrics.edit_distance("kitten", "sitting") == 3
    assert metrics.edit_distance("", "abc") == 3 and metrics.edit_distance("abc", "") == 3
    assert metrics.wer("the cat sat", "the cat sat") == 0.0
    assert metrics.wer("the cat sat", "the bat sat") == pytest.approx(1 / 3)
    assert metrics.wer("the cat sat", "the cat sat down now") == pytest.approx(2 / 3)  # insertions
    assert metrics.wer("the cat sat", "") == 1.0
    assert metrics.cer("abcd", "abd") == 0.25
    assert metrics.cer("The Cat!", "the cat") == 0.0  # scored after normalising both sides
    # corpus level: total edits over total reference words, not a mean of per-clip rates
    assert metrics.wer(["a b c d", "e"], ["a b c d", "x"]) == pytest.approx(1 / 5)
    with pytest.raises(ValueError):
        metrics.wer(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        metrics.cer([""], ["x"])
