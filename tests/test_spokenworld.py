import json
import os
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch

from nanosdm.corpus import spokenworld

CFG = dict(data_entities=24, data_text_only_frac=0.25, data_text_docs=300, data_dialogues=3,
           data_eval_dialogues=2, seed=7, workers=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cfg = dict(CFG, data_dir=str(root / "data"), out_dir=str(root / "out"))
    metrics = spokenworld.build(cfg)
    return cfg, metrics


def test_text_is_deterministic_given_the_seed():
    def sample(seed):
        world = spokenworld.make_world(30, 0.2, seed)
        rng = random.Random(seed)
        return world, [spokenworld.text_document(rng, world) for _ in range(50)]
    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_a_memory_question_comes_right_after_its_telling():
    # the model learns to answer "what is my name?" only if the telling is still in its 20 s window
    world = spokenworld.make_world(30, 0.2, 5)
    rng = random.Random(5)
    asked = 0
    for _ in range(300):
        exs = spokenworld.random_exchanges(rng, world, rng.randint(4, 8), held_out=False)
        for before, ex in zip([None] + exs, exs):
            if ex["kind"] == "memory":
                asked += 1
                assert before["kind"] == "tell" and before["question"].endswith(f" {ex['answer']}.")
    assert asked > 50
    # text documents ask anywhere after the telling: a text LM learns to copy across a document
    gaps = []
    for _ in range(300):
        exs = spokenworld.random_exchanges(rng, world, rng.randint(4, 8), held_out=False, ask_at_once=False)
        kinds = [ex["kind"] for ex in exs]
        gaps += [i - kinds.index("tell") for i, k in enumerate(kinds) if k == "memory" and kinds.count("tell") == 1]
    assert min(gaps) >= 1 and max(gaps) >= 3


def test_world_has_text_only_facts_and_distinct_names():
    world = spokenworld.make_world(200, 0.15, 1)
    names = [e["name"] for e in world]
    assert len(set(names)) == 200
    assert sum(e["text_only"] for e in world) == 30
    assert all(e["text_only"] == (i < 30) for i, e in enumerate(world))      # the first 30 are text-only
    # each attribute drawn uniformly from its values: with 200 creatures every value occurs, none
    # more than twice its share (measured: at most 1.5x)
    for attr, (values, *_rest) in spokenworld.ATTRIBUTES.items():
        counts = Counter(e[attr] for e in world)
        assert set(counts) == set(values), attr
        assert max(counts.values()) <= 2 * len(world) / len(values), (attr, counts)


def test_held_out_questions_are_seen_frames_on_other_attributes():
    # a held-out question of one attribute is a frame the training questions use for another
    # attribute: held out is the combination, not the shape (see spokenworld.QUESTION_FRAMES)
    pattern = lambda frame: re.escape(frame).replace(re.escape("{a}"), "(.+)")      # "{e}" stays literal
    frame_of = lambda q: [f for f in spokenworld.QUESTION_FRAMES if re.fullmatch(pattern(f), q)]
    for attr, (_, _, train_q, held_q, _) in spokenworld.ATTRIBUTES.items():
        assert len(held_q) == 2 and not set(held_q) & set(train_q), attr
        for q in held_q:
            (frame,) = frame_of(q)
            others = [a for a, spec in spokenworld.ATTRIBUTES.items()
                      if a != attr and any(frame_of(t) == [frame] for t in spec[2])]
            assert others, (attr, q)
            noun = re.fullmatch(pattern(frame), q).group(1)                   # "home town", "number of legs"
            assert any(noun in t for t in train_q), (attr, noun)            # the noun is seen in other frames


def test_held_out_phrasings_never_in_training_text(corpus):
    cfg, _ = corpus
    train_questions = {t for doc in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "text_train.jsonl"))
                       for role, t in doc["turns"] if role == "user"}
    items = spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "qa_eval.jsonl"))
    facts = [it for it in items if it["kind"] == "fact"]
    assert len(facts) == CFG["data_entities"] * len(spokenworld.ATTRIBUTES)
    assert not {it["question"] for it in facts} & train_questions
    assert all(it["answer"] in it["reply"].rstrip(".").split(" ") for it in facts)
    assert any(it["text_only"] for it in facts) and any(not it["text_only"] for it in facts)


def test_spoken_splits_hold_no_text_only_fact(corpus):
    cfg, _ = corpus
    world = spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl"))
    text_only = {e["name"] for e in world if e["text_only"]}
    for split in ("train", "val", "unseen_voice"):
        for d in spokenworld.SpeechSplit(cfg["data_dir"], split).dialogues:
            spoken = {w[0] for tr in d["turns"] for w in tr["words"]}
            assert not spoken & text_only, (split, spoken & text_only)
    # ... while the text_only split asks only about them (besides arithmetic and memory)
    asked = [tr for d in spokenworld.SpeechSplit(cfg["data_dir"], "text_only").dialogues for tr in d["turns"]
             if tr["kind"] == "question" and tr.get("text_only")]
    assert asked and all(set(tr["text"].rstrip("?.").split()) & text_only for tr in asked)
    # and the text corpus does contain the text-only facts
    text = open(os.path.join(cfg["data_dir"], "text_train.jsonl")).read()
    assert any(name in text for name in text_only)


def test_unseen_voices_never_in_training(corpus):
    cfg, metrics = corpus
    with open(os.path.join(cfg["data_dir"], "corpus.json")) as f:
        info = json.load(f)
    seen, unseen = set(info["seen_voices"]), set(info["unseen_voices"])
    assert unseen and not seen & unseen
    variant = lambda v: v.split("+")[1] if "+" in v else ""
    assert not {variant(v) for v in seen} & {variant(v) for v in unseen}
    for split, pool in (("train", seen), ("val", seen), ("unseen_voice", unseen)):
        for d in spokenworld.SpeechSplit(cfg["data_dir"], split).dialogues:
            assert d["user_voice"]["voice"] in pool
    assert metrics["data_unseen_voices"] == len(unseen)


def test_dialogue_timings_inside_audio_and_channels_carry_their_speaker(corpus):
    cfg, metrics = corpus
    split = spokenworld.SpeechSplit(cfg["data_dir"], "train")
    assert len(split) == CFG["data_dialogues"]
    seconds = sum(split.dialogue(i)[0].shape[1] for i in range(len(split))) / spokenworld.SAMPLE_RATE
    assert 60 < seconds and metrics["data_hours_train"] == round(seconds / 3600, 3)   # 3 dialogues of ~30 s
    for i in range(len(split)):
        wav, d = split.dialogue(i)
        dur = wav.shape[1] / spokenworld.SAMPLE_RATE
        assert wav.shape[0] == 2
        kinds = {tr["kind"] for tr in d["turns"]}
        assert {"question", "answer"} <= kinds
        for tr in d["turns"]:
            ch = spokenworld.ASSISTANT if tr["speaker"] == "assistant" else spokenworld.USER
            words = tr["words"]
            assert 0 <= tr["start"] < tr["end"] <= dur
            for (_, s, e), (_, s2, _) in zip(words, words[1:]):
                assert s < e <= s2 + 1e-6
            for w, s, e in words:
                seg = wav[ch, int(s * 16000): int(e * 16000)]
                assert seg.abs().max() > 0.01, (w, tr["text"])
            if tr["kind"] != "answer" or not tr.get("interrupted"):
                assert [w[0] for w in words] == tr["text"].replace(",", "").rstrip(".?").split()
        # the first answer comes after a gap: nothing on the assistant channel before it
        first = next(tr for tr in d["turns"] if tr["speaker"] == "assistant")
        assert wav[spokenworld.ASSISTANT, : int(first["start"] * 16000)].abs().max() == 0


def test_utterances_are_cut_with_relative_times(corpus):
    cfg, _ = corpus
    split = spokenworld.SpeechSplit(cfg["data_dir"], "unseen_voice")
    user_turns = [(i, tr) for i, d in enumerate(split.dialogues) for tr in d["turns"] if tr["speaker"] == "user"]
    cut = list(split.utterances(speaker="user"))
    assert len(cut) == len(user_turns) >= 2 * CFG["data_eval_dialogues"]    # every user turn, a question at least
    for (wav, tr), (i, turn) in zip(cut, user_turns):
        assert tr["speaker"] == "user" and tr["text"] == turn["text"] and tr["start"] == 0
        assert abs(wav.shape[0] / 16000 - tr["end"]) < 1e-3
        assert tr["words"][0][1] >= 0 and tr["words"][-1][2] <= tr["end"] + 1e-3
        # the user's channel of the dialogue at the turn's time, its words moved by the turn's start
        s = int(round(turn["start"] * 16000))
        assert torch.equal(wav, split.dialogue(i)[0][spokenworld.USER, s: s + len(wav)])
        assert tr["words"] == [[w, a - turn["start"], b - turn["start"]] for w, a, b in turn["words"]]


def test_interruption_silences_the_assistant():
    plan = spokenworld.plan_dialogue(random.Random(0), spokenworld.make_world(5, 0, 0), ["en-us+m3"], False)
    for ex in plan["exchanges"]:
        ex.update(interrupt=None, backchannel=None, preface=None)
    plan["exchanges"][0].update(interrupt=0.5, reaction=0.25)
    pcm, turns = spokenworld.render_dialogue(plan)
    ans = next(tr for tr in turns if tr["kind"] == "answer")
    nxt = [tr for tr in turns if tr["kind"] == "question"][1]
    assert ans["interrupted"] and nxt["start"] < ans["end"]                   # overlap: the user barges in
    assert abs(ans["end"] - nxt["start"] - 0.25) < 1e-6                        # and the assistant yields
    after = pcm[int(ans["end"] * 16000) + 1: int(nxt["end"] * 16000), spokenworld.ASSISTANT]
    assert np.abs(after).max() == 0
    assert all(e <= ans["end"] for _, _, e in ans["words"])


