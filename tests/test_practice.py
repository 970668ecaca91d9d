"""The extra speech the dual-stream model practises on (nanosdm/corpus/practice.py)."""
from nanosdm.corpus import practice


def test_align_hears_every_name_but_no_text_only_fact(tmp_path):
    """align's scrambled ASR-like turns name the text-only creatures too (a name never heard cannot be
    transcribed), while no question or reply of align is about one (their facts stay text-only)."""
    import json
    import os
    import random
    from nanosdm.corpus import spokenworld
    world = spokenworld.make_world(40, 0.25, seed=0)
    spokenworld.write_jsonl(os.path.join(tmp_path, "world.jsonl"), world)
    with open(os.path.join(tmp_path, "corpus.json"), "w") as f:
        json.dump(dict(seen_voices=["en"]), f)
    cfg = dict(data_dir=str(tmp_path), align_user_turns=400, align_assistant_turns=100, align_scrambled_frac=0.3)
    text_only = {e["name"] for e in world if e["text_only"]}
    named = lambda plans, ch: sum(len(set(t.replace("?", " ").replace(".", " ").split()) & text_only)
                                  for c, t, _, _ in plans if c == ch)
    plans = practice.align_plans(cfg, random.Random(0))
    assert named(plans, spokenworld.USER) > 10                     # text-only names are heard...
    assert named(plans, spokenworld.ASSISTANT) == 0                # ...in no reply
    questions_only = practice.align_plans(dict(cfg, align_scrambled_frac=0.0), random.Random(0))
    assert named(questions_only, spokenworld.USER) == 0            # ...and in no question: only in scrambled turns


def test_extra_dialogues_repeat_whatever_the_workers(tmp_path):
    """eSpeak's timing depends on what its process spoke before: with long-lived workers, a
    dialogue's audio changed with the pool's size and its scheduling (277,433 samples against 277,441)."""
    import json
    import os
    import numpy as np
    from nanosdm.corpus import spokenworld
    spokenworld.write_jsonl(os.path.join(tmp_path, "world.jsonl"), spokenworld.make_world(20, 0.25, seed=0))
    with open(os.path.join(tmp_path, "corpus.json"), "w") as f:
        json.dump(dict(seen_voices=["en-us", "en+Alex"]), f)
    cfg = dict(data_dir=str(tmp_path), speech_extra_dialogues=6, seed=0)
    first, second = [list(practice.extra_dialogues(dict(cfg, workers=w), chunk=2)) for w in (2, 3)]
    assert len(first) == len(second) == 6
    for (wav1, turns1), (wav2, turns2) in zip(first, second):
        assert wav1.shape == wav2.shape and np.array_equal(wav1.numpy(), wav2.numpy()) and turns1 == turns2


def test_imap_ahead_keeps_order_and_makes_no_more_than_it_may_ahead():
    """The extra dialogues are rendered in workers a few ahead of the reader, never all at once."""
    import threading
    import time
    from multiprocessing.pool import ThreadPool
    started, lock = [], threading.Lock()

    def square(x):
        with lock:
            started.append(x)
        return x * x

    with ThreadPool(3) as pool:
        results = practice.imap_ahead(pool, square, range(20), ahead=4)
        assert next(results) == 0
        time.sleep(0.2)                                  # time for the workers to run ahead, if they could
        assert len(started) == 5                         # the one read, and 4 ahead of it
        assert [0] + list(results) == [x * x for x in range(20)]
    assert sorted(started) == list(range(20))
