"""What the omni model reads: the prompt's layout and its targets."""
import torch

from nanosdm import omni_data
from nanosdm.tokenizer import ASSISTANT, BOS, EOS, USER


def test_prompt_layout_and_targets():
    speech = torch.randn(7, 6)                        # 7 frames -> 3 positions
    ex = omni_data.build_example([("speech", torch.randn(4, 6)), ("assistant", [11, 12]), ("speech", speech)], 3, [20, 21])
    ids = ex["ids"]
    assert ids[:2] == [BOS, USER] and ids[4] == EOS and ids[5:9] == [ASSISTANT, 11, 12, EOS]
    assert ids[9] == USER and sum(ex["is_speech"]) == 2 + 3 and ids[13:] == [EOS, ASSISTANT, 20, 21]
    assert ex["answer_pos"] == [15, 16]
    # only the answer and its EOS are targets, each at the position before it
    scored = [(p, t) for p, t in enumerate(ex["targets"]) if t >= 0]
    assert scored == [(14, 20), (15, 21), (16, EOS)]


def test_a_users_turn_is_copied_out_of_its_dialogue():
    """A view would keep the whole stereo dialogue alive for every turn the stage holds."""
    from nanosdm.corpus import spokenworld
    dialogue = torch.randn(2, 16000 * 10)
    turn = dict(start=2.0, end=3.5)
    wav = omni_data.user_audio(dialogue, turn)
    start = 2 * 16000
    assert torch.equal(wav, dialogue[spokenworld.USER, start:start + len(wav)])
    assert len(wav) == int(1.5 * 16000) + omni_data.QUESTION_TAIL
    assert wav.untyped_storage().nbytes() == wav.numel() * 4           # its own samples, not the dialogue's
