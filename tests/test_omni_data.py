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
