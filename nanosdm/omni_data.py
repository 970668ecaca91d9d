"""
What the omni model (omni.py) reads: the user's speech as the frozen ASR encoder's frames, a prompt's
token ids with the places those frames go, and SpokenWorld's exchanges, the user's turns as speech and
the assistant's as text, the earlier turns of the dialogue as context, as in a half-duplex chat.
The training stage, the evaluation and the live server build their prompts here.

    feats = encode_speech(asr, [wav])                     # the frozen ear: [frames, D], 33 per second
    example = make_example(dict(parts=[], question=feats[0]), k, block_size, with_answer=False)
    items = spoken_exchanges(cfg, "train", asr, tok)      # a split's exchanges, encoded once
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nanosdm.corpus import spokenworld
from nanosdm.corpus.audio import SAMPLE_RATE
from nanosdm.tokenizer import ASSISTANT, BOS, EOS, UNK, USER

CONTEXT_TURNS = 6         # earlier turns in the prompt (the cascade baseline keeps as many)
SYNTH_CHUNK = 512         # synthesized questions encoded at a time
QUESTION_TAIL = 800       # samples kept after a user turn's end (50 ms), as the cascade does
SPEECH = UNK              # the id that stands where speech embeddings go (never read: replaced)
ANSWER_ROOM = 32          # positions the context leaves for the question and a generated answer
FRAME_S = 0.03            # seconds per ASR encoder frame (what the adapter hears)


# -----------------------------------------------------------------------------
# the ear: the ASR's encoder, frozen

@torch.no_grad()
def encode_speech(asr, wavs, batch_size=32):
    """Waveforms -> the ASR encoder's top layer, one [frames, D] tensor each (33 per second).
    The ASR's own forward pass without its character head; batched with its padding mask, so a
    clip gives the same frames alone or in a batch."""
    from nanosdm.asr import conv_lengths, features, pad_batch
    dev = asr.head.weight.device
    out = [None] * len(wavs)
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        x, lengths = pad_batch([wavs[i].float() for i in rows])
        feat, flen = features(x.to(dev), lengths.to(dev))
        valid = torch.arange(feat.shape[-1], device=dev)[None, None] < flen[:, None, None]
        h = F.gelu(asr.conv2(F.gelu(asr.conv1(feat)) * valid)).transpose(1, 2)
        n = conv_lengths(flen)
        h = asr.transformer(h, attn_mask=torch.arange(h.shape[1], device=dev)[None] < n[:, None])
        for j, i in enumerate(rows):
            out[i] = h[j, :int(n[j])].float().cpu().clone()   # not a view that keeps the whole batch
    return out


# -----------------------------------------------------------------------------
# the prompt: token ids, SPEECH where the adapter's vectors go

def downsampled_length(n, k):
    """Positions an input of n encoder frames takes in the LM after concatenating k frames."""
    return math.ceil(n / k)


def build_example(parts, k, answer=None):
    """A prompt as token ids: parts = [("speech", frames [T, D]) | ("user"/"assistant", token ids)],
    the speech ones spoken by the user. -> dict(ids, is_speech, segments, targets, answer_pos): the
    answer's tokens (and its EOS) are the only targets; answer_pos are the answer tokens' positions."""
    ids, speech, segments = [BOS], [False], []
    for kind, x in parts:
        if kind == "speech":
            n = downsampled_length(len(x), k)
            ids += [USER] + [SPEECH] * n + [EOS]
            speech += [False] + [True] * n + [False]
            segments.append(x)
        else:
            role = USER if kind == "user" else ASSISTANT
            ids += [role] + list(x) + [EOS]
            speech += [False] * (len(x) + 2)
    ids.append(ASSISTANT)
    speech.append(False)
    n_prompt = len(ids)
    answer = list(answer or [])
    ids += answer
    speech += [False] * len(answer)
    targets = [-1] * (n_prompt - 1) + answer + [EOS] if answer else [-1] * n_prompt
    return dict(ids=ids, is_speech=speech, segments=segments, targets=targets,
                answer_pos=list(range(n_prompt, n_prompt + len(answer))))


def collate(examples, device):
    """Right-padded batch (causal attention: padding after a row's end is never attended)."""
    L = max(len(e["ids"]) for e in examples)
    pad = lambda key, value: torch.tensor([e[key] + [value] * (L - len(e[key])) for e in examples], device=device)
    return dict(ids=pad("ids", EOS), is_speech=pad("is_speech", False), targets=pad("targets", -1),
                segments=[s for e in examples for s in e["segments"]], answer_pos=[e["answer_pos"] for e in examples])


def prompt_length(parts, k):
    """Positions build_example gives these parts without an answer: BOS, each turn with its role
    and EOS, ASSISTANT."""
    return 1 + sum(downsampled_length(len(x), k) + 2 if kind == "speech" else len(x) + 2 for kind, x in parts) + 1


def trim_context(context, question, k, block_size, answer_len):
    """Drop the oldest context turns until the context and an answer of answer_len tokens, plus
    ANSWER_ROOM, fit the LM's block (one turn kept: the room covers a short question); then more,
    all if need be, until the question fits too, with room for the answer and its EOS."""
    while len(context) > 1 and prompt_length(context, k) + answer_len + ANSWER_ROOM + 1 > block_size:
        context = context[1:]
    while context and prompt_length(context + question, k) + answer_len + 1 > block_size:
        context = context[1:]
    return context


# -----------------------------------------------------------------------------
# data: SpokenWorld exchanges, the user's turns as speech, the assistant's as text

def exchanges(split):
    """Every user question (or telling) of a spokenworld.SpeechSplit with the reply after it and the
    turns before it: [(dialogue index, question turn, reply turn or None, context turns)]."""
    out = []
    for i, d in enumerate(split.dialogues):
        turns = [tr for tr in d["turns"] if tr["kind"] in ("question", "answer")]
        for j, tr in enumerate(turns):
            if tr["speaker"] == "user" and tr["kind"] == "question":
                reply = next((u for u in turns[j + 1:] if u["speaker"] == "assistant"), None)
                out.append((i, tr, reply, turns[max(0, j - CONTEXT_TURNS):j]))
    return out


def user_audio(wav, turn):
    """The user's turn, copied out of its dialogue [2, T] (a view would keep the whole stereo
    dialogue alive: one per user turn held about 3 GB for the training split)."""
    return wav[spokenworld.USER, int(turn["start"] * SAMPLE_RATE):int(turn["end"] * SAMPLE_RATE) + QUESTION_TAIL].clone()


def prompt_parts(tok, context, feats):
    """Context turns -> parts for build_example; feats: id(turn) -> encoder frames of user turns."""
    return [("speech", feats[id(tr)]) if tr["speaker"] == "user" else ("assistant", tok.encode(tr["text"]))
            for tr in context]


def spoken_exchanges(cfg, split_name, asr, tok, complete_only=True):
    """Encoder frames of every user turn of a split, and its exchanges as (parts, question frames,
    answer tokens, question turn, reply turn, dialogue index)."""
    sp = spokenworld.SpeechSplit(cfg["data_dir"], split_name)
    items = exchanges(sp)
    wanted = {}
    for i, q, _, ctx in items:
        for tr in ctx + [q]:
            if tr["speaker"] == "user":
                wanted[id(tr)] = (i, tr)
    wavs, keys = [], list(wanted)
    for key in keys:
        i, tr = wanted[key]
        wavs.append(user_audio(sp.dialogue(i)[0], tr))
    feats = dict(zip(keys, encode_speech(asr, wavs)))
    out = []
    for i, q, reply, ctx in items:
        if complete_only and (reply is None or reply.get("interrupted")):
            continue
        out.append(dict(parts=prompt_parts(tok, ctx, feats), question=feats[id(q)], turn=q, reply=reply, dialogue=i,
                        answer=tok.encode(reply["text"]) if reply is not None else None))
    return out


def synthetic_exchanges(cfg, asr, tok, n):
    """n more training exchanges than the corpus holds: the corpus's own generator (its spoken
    creatures, training phrasings and training voices, never a text-only fact or an unseen voice)
    in pseudo-dialogues of 2-6 exchanges, only the user's questions synthesized (eSpeak renders
    hours a minute). Without them the adapter memorised the corpus's 703 exchanges (train loss
    0.27) and answered 4% of held-out spoken questions. The assistant's turns are text (context)."""
    import json
    import random
    from nanosdm.corpus import espeak
    world = [e for e in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl")) if not e["text_only"]]
    with open(os.path.join(cfg["data_dir"], "corpus.json")) as f:
        voices = json.load(f)["seen_voices"]
    rng = random.Random(cfg["seed"] + 13)
    groups, jobs = [], []
    while len(jobs) < n:
        voice = dict(voice=rng.choice(voices), rate=rng.randint(140, 210), pitch=rng.randint(25, 75))
        exs = spokenworld.random_exchanges(rng, world, rng.randint(2, 6), held_out=False)
        groups.append(exs)
        jobs += [dict(text=ex["question"], **voice) for ex in exs]
    peaks = [rng.uniform(0.25, 0.9) for _ in jobs]
    feats, wavs = [], []
    for (w, _, _), p in zip(tqdm(espeak.synthesize_many(jobs, cfg.get("workers") or None), total=len(jobs),
                                 desc="omni: synthetic questions", leave=False), peaks):
        wavs.append(torch.from_numpy(w * p / max(1e-4, float(np.abs(w).max()))).float())
        if len(wavs) == SYNTH_CHUNK:    # keep the encoder's frames, not hours of audio
            feats += encode_speech(asr, wavs)
            wavs = []
    feats = iter(feats + encode_speech(asr, wavs))
    out = []
    for exs in groups:
        context = []
        for ex in exs:
            q = next(feats)
            answer = tok.encode(ex["reply"])
            out.append(dict(parts=context[-CONTEXT_TURNS:], question=q, answer=answer, reply=None, turn=None, dialogue=None))
            context += [("speech", q), ("assistant", answer)]
    return out


def make_example(item, k, block_size, with_answer=True):
    """The prompt of an exchange, its context trimmed to fit the LM's block (trim_context); a
    question too long for the block with one token of answer is refused, naming the setting."""
    answer = list(item["answer"]) if with_answer else []
    question = [("speech", item["question"])]
    need = prompt_length(question, k) + len(answer) + 1      # + the answer's EOS (or its first token)
    if need > block_size:
        raise ValueError(f"omni: a spoken question of {len(item['question'])} encoder frames "
                         f"({len(item['question']) * FRAME_S:.1f} s) and its answer need {need} positions, more than "
                         f"the text LM's block of {block_size} (--text_block_size): train the text stage with a "
                         f"larger --text_block_size, or hear through more frames per position (--omni_k)")
    context = trim_context(item["parts"], question, k, block_size, len(answer))
    return build_example(context + question, k, answer if with_answer else None)
