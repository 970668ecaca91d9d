"""The dual-stream evaluation's pieces that need no trained model (the judge: test_judge.py)."""
import torch

from nanosdm.eval.dialogue import force_question, question_name, voiced_onset
from nanosdm.tokenizer import ASSISTANT, EOS, PAD, USER


def test_voiced_onset_finds_the_first_loud_window():
    wav = torch.zeros(16000 * 2)
    wav[int(1.3 * 16000):] = 0.5
    assert abs(voiced_onset(wav, 1.0) - 0.3) < 0.021
    assert voiced_onset(torch.zeros(16000), 0.2) is None




def test_the_question_is_forced_up_to_the_users_eos_and_never_into_the_reply():
    a, b, c = 20, 21, 22
    rec = torch.tensor([[PAD, USER, a, b, PAD, EOS, PAD, ASSISTANT, c, EOS],     # EOS a frame after the voice
                        [USER, a, b, PAD, ASSISTANT, c, EOS, PAD, PAD, PAD]])    # no user EOS before the reply
    force = force_question(rec, [4, 3])
    assert force[0].tolist() == [PAD, USER, a, b, PAD, EOS, -1, -1, -1, -1]
    assert force[1].tolist() == [USER, a, b, PAD, -1, -1, -1, -1, -1, -1]


def test_the_question_names_its_creature():
    names = {"kotan", "lezis"}
    assert question_name("what colour is the kotan?", names) == "kotan"
    assert question_name("who is the owner of the lezis.", names) == "lezis"
    assert question_name("what is two plus three?", names) is None
