"""
The extra speech the dual-stream model practises on, beyond the corpus's dialogues, synthesized by
eSpeak NG for stage `speech` (corpus/speech.py encodes it):

  align_dialogues   single utterances for `align` (modality adaptation): ASR-like user turns (training
                    questions in training voices, and scrambled words and names that force listening)
                    and TTS-like assistant turns (replies in the assistant's voice)
  extra_dialogues   more two-channel training dialogues like the corpus's, for `sft`

eSpeak renders hours a minute, so both are cheap; neither ever says a text-only fact.
"""
import collections
import itertools
import json
import os
import random

import numpy as np
import torch
from tqdm import tqdm

from nanosdm.corpus import audio, spokenworld


def align_plans(cfg, rng):
    """(channel, text, voice) for the ASR-like user turns (training questions in training voices,
    plus turns of scrambled words and names, which force listening as in the ASR stage) and
    the TTS-like assistant turns (replies in the assistant's voice).

    The scrambled turns name every creature of the world, the text-only ones too: a name is one
    token, and a name never heard cannot be transcribed, so without them the text_only split
    measured whether the ear guesses unheard words, not whether text knowledge reaches speech.
    Their facts are never spoken: no question or reply here is about a text-only creature."""
    everyone = spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl"))
    world = [e for e in everyone if not e["text_only"]]
    with open(os.path.join(cfg["data_dir"], "corpus.json")) as f:
        voices = json.load(f)["seen_voices"]
    vocab = sorted({w for e in world for a in spokenworld.ATTRIBUTES for w in spokenworld.ATTRIBUTES[a][2][0].format(e=e["name"]).split()})
    plans = []
    for i in range(cfg["align_user_turns"] + cfg["align_assistant_turns"]):
        ex = spokenworld.random_exchanges(rng, world, 1, held_out=False)[0]
        if i < cfg["align_user_turns"]:
            voice = dict(voice=rng.choice(voices), rate=rng.randint(140, 210), pitch=rng.randint(25, 75))
            text = ex["question"]
            if rng.random() < cfg["align_scrambled_frac"]:
                words = [rng.choice(vocab) if rng.random() > 0.3 else rng.choice(everyone)["name"] for _ in range(rng.randint(2, 7))]
                text = " ".join(words) + "."
            plans.append((spokenworld.USER, text, voice, rng.uniform(0.25, 0.6)))
        else:
            # the dialogues' assistant level: at peak 1.0 the same turns share codebook 0 with it on
            # only 74% of frames (codebooks 1-3: 24/14/9%), a second voice the dialogues never use
            plans.append((spokenworld.ASSISTANT, ex["reply"], spokenworld.ASSISTANT_VOICE, spokenworld.ASSISTANT_PEAK))
    return plans


def align_dialogues(cfg, seed, per_dialogue=8):
    """Group the single utterances into pseudo-dialogues of `per_dialogue` turns on one channel,
    each turn followed by silence, so they are stored and windowed like any dialogue."""
    from nanosdm.corpus import espeak
    rng = random.Random(seed)
    plans = align_plans(cfg, rng)
    jobs = [dict(text=t, **v) for _, t, v, _ in plans]
    rendered = espeak.synthesize_many(jobs)
    group = []
    for (ch, text, _, peak), (wav, words, _) in tqdm(zip(plans, rendered), total=len(plans), desc="align turns", leave=False):
        group.append((ch, text, wav * peak / max(1e-4, np.abs(wav).max()), words))
        if len(group) == per_dialogue:
            yield place(group, rng)
            group = []
    if group:
        yield place(group, rng)


def extra_dialogues(cfg, chunk=64):
    """More training dialogues than the corpus holds, rendered here and kept only as codes (the
    dual-stream model memorised the tiny corpus's hour in a few hundred steps and never learnt to
    listen; eSpeak renders hours a minute). Same world, same training voices, same phrasings.
    Each `chunk` of dialogues is rendered by a fresh worker: eSpeak's timing depends on what its
    process spoke before, so with long-lived workers the audio changed with whichever dialogues a
    worker happened to take first, and a seed did not repeat the stage. Each fresh worker is a fork of
    train.py's large process, so chunks are large (96 dialogues beside a 1.8 GB parent: 19-20 s in
    chunks of 16, 12 s in chunks of 64, 9-12 s with long-lived workers)."""
    import multiprocessing as mp
    n = cfg["speech_extra_dialogues"]
    if n <= 0:
        return
    world = [e for e in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl")) if not e["text_only"]]
    with open(os.path.join(cfg["data_dir"], "corpus.json")) as f:
        voices = json.load(f)["seen_voices"]
    rng = random.Random(cfg["seed"] + 3 * 10**6)
    plans = [spokenworld.plan_dialogue(rng, world, voices, held_out=False) for _ in range(n)]
    chunks = [plans[i:i + chunk] for i in range(0, n, chunk)]
    workers = cfg.get("workers") or os.cpu_count()
    with mp.Pool(workers, maxtasksperchild=1) as pool, tqdm(total=n, desc="speech extra", unit="dlg") as bar:
        for rendered in imap_ahead(pool, render_dialogues, chunks, 2 * workers):
            for pcm, turns in rendered:
                bar.update(1)
                yield torch.from_numpy(pcm.T.astype(np.float32) / 32768.0), turns


def render_dialogues(plans):
    return [spokenworld.render_dialogue(p) for p in plans]


def imap_ahead(pool, fn, items, ahead):
    """pool.imap(fn, items), in order, with at most `ahead` results made and not yet read. Pool.imap
    itself runs ahead without a limit, and the codec reads far slower than eSpeak renders: the
    1200 extra dialogues' audio (2.6 GB) all waited in memory."""
    todo, pending = iter(items), collections.deque()
    for item in itertools.islice(todo, ahead):
        pending.append(pool.apply_async(fn, (item,)))
    while pending:
        result = pending.popleft().get()
        for item in itertools.islice(todo, 1):
            pending.append(pool.apply_async(fn, (item,)))
        yield result


def place(group, rng):
    """Single utterances [(channel, text, wav, words)] laid one after another on their channels with
    pauses between them: a pseudo-dialogue (stereo wav, its turns)."""
    sr = audio.SAMPLE_RATE
    t, pieces, turns = rng.uniform(0.2, 0.6), [], []
    for ch, text, wav, words in group:
        pieces.append((ch, int(t * sr), wav))
        turns.append(dict(speaker="assistant" if ch == spokenworld.ASSISTANT else "user", text=text, start=t,
                          end=t + len(wav) / sr, kind="align", words=[[w, t + s, t + e] for w, s, e in words]))
        t += len(wav) / sr + rng.uniform(0.3, 1.0)
    stereo = np.zeros((2, int(t * sr)), dtype=np.float32)
    for ch, s, wav in pieces:
        stereo[ch, s:s + len(wav)] += wav
    return torch.from_numpy(stereo), turns
