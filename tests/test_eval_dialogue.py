"""The dual-stream evaluation's pieces that need no trained model (the judge: test_judge.py)."""
import torch

from nanosdm.eval import dialogue
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


def test_the_ears_wide_questions_each_name_a_creature_in_a_held_out_voice_rendered_once(tmp_path):
    import json
    from nanosdm.corpus import spokenworld
    cfg = dict(data_entities=24, data_text_only_frac=0.25, data_text_docs=50, data_dialogues=2,
               data_eval_dialogues=2, seed=3, workers=2, device="cpu",
               data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"))
    spokenworld.build(cfg)
    turns = dialogue.unseen_turns(cfg, n=12)
    with open(tmp_path / "data" / "corpus.json") as f:
        corpus = json.load(f)
    world = {e["name"]: e for e in spokenworld.read_jsonl(str(tmp_path / "data" / "world.jsonl"))}
    assert len(turns["wavs"]) == len(turns["texts"]) == 12
    assert set(turns["voices"]) <= set(corpus["unseen_voices"]) and not set(turns["voices"]) & set(corpus["seen_voices"])
    for text, name, wav in zip(turns["texts"], turns["names"], turns["wavs"]):
        assert dialogue.question_name(text, set(world)) == name and not world[name]["text_only"]
        assert len(wav) > 0.3 * 16000 and 0.25 - 1e-4 <= wav.abs().max() <= 0.9 + 1e-4
    again = dialogue.unseen_turns(cfg, n=12)                 # from the cache: the very same audio
    assert again["texts"] == turns["texts"] and all(torch.equal(a, b) for a, b in zip(again["wavs"], turns["wavs"]))
