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
