"""The dual-stream evaluation's pieces that need no trained model (the judge: test_judge.py)."""
import torch

from nanosdm.eval.dialogue import voiced_onset


def test_voiced_onset_finds_the_first_loud_window():
    wav = torch.zeros(16000 * 2)
    wav[int(1.3 * 16000):] = 0.5
    assert abs(voiced_onset(wav, 1.0) - 0.3) < 0.021
    assert voiced_onset(torch.zeros(16000), 0.2) is None


