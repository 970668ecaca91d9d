"""
The fact-free judge: does a spoken reply say the right answer? It scores every speech-channel
figure (sft, dpo's pairs and its before/after, omni) and so must not know the world's facts. The
recognizer's character LM read every fact and would correct a wrong answer into the right one, so
the judge uses the acoustic model alone (greedy CTC) and knows only what the *question* tells
anyone: which kind of value is asked for. Its transcript is matched to the nearest of the replies
the question allows, one per possible value ("the kotan is red.", "the kotan is blue.", ...), all
equally likely to it.
"""
import re

import torch
import torch.nn.functional as F

from nanosdm import ctc
from nanosdm.corpus import spokenworld
from nanosdm.corpus.audio import SAMPLE_RATE

VOICED_RMS = 0.02       # a 20 ms window louder than this is voiced (-34 dBFS)
VAD_WIN = SAMPLE_RATE // 50   # 20 ms


def voiced(wav):
    """Boolean [N // VAD_WIN]: which 20 ms windows of wav are voiced."""
    n = len(wav) // VAD_WIN
    x = torch.as_tensor(wav[:n * VAD_WIN]).float().reshape(n, VAD_WIN)
    return (x.pow(2).mean(1).sqrt() > VOICED_RMS).numpy()


def trim(wav, margin_s=0.1):
    """wav cut to its voiced stretch (first to last voiced 20 ms window, margin_s either side).
    The recognizer normalises a clip over all its frames: seconds of silence around a reply garble
    it (the corpus's own answers were judged right 14-19% in a question + 4 s window, 95% alone)."""
    on = voiced(wav)
    if not on.any():
        return wav
    idx = on.nonzero()[0]
    margin = int(margin_s * SAMPLE_RATE)
    return wav[max(0, idx[0] * VAD_WIN - margin):min(len(wav), (idx[-1] + 1) * VAD_WIN + margin)]


def reply_candidates(question):
    """Every reply the question allows, one per possible value, and the reply with no value at all:
    [(value, reply text)], the last with value None. Uses only the question and the world's
    vocabulary and templates, never its facts."""
    q = question.lower().strip()
    m = re.search(r"(\w+) (plus|minus) (\w+)", q)
    if m:
        values, reply = spokenworld.NUMBERS, f"{m.group(1)} {m.group(2)} {m.group(3)} is {{v}}."
    elif "name" in q and ("my" in q.split() or "remember" in q):
        values, reply = spokenworld.PEOPLE, "your name is {v}."
    elif "where do i live" in q or "where i live" in q:
        values, reply = spokenworld.TOWNS, "you live in {v}."
    else:
        values = None
        for vals, _, train_q, held_q, template in spokenworld.ATTRIBUTES.values():
            for question_template in train_q + held_q:
                pattern = re.escape(question_template).replace(re.escape("{e}"), r"(\w+)")
                m = re.fullmatch(pattern, q)
                if m and values is None:
                    values, reply = vals, template.replace("{e}", m.group(1))
        if values is None:
            return []
    return [(v, reply.format(v=v)) for v in values] + [(None, reply.format(v=""))]


def judge(transcript, question, answer, scores=None, slack=2, max_cer=0.5):
    """Whether the reply heard says the right answer. transcript: the acoustic model's greedy
    text; scores: its CTC log-likelihood of each allowed reply (reply_candidates' order), or None.
    The replies within `slack` character edits of the nearest one are the plausible readings; the
    best scored of them (the nearest, without scores) is what was said, and it must be the one
    with the right answer: not a wrong value, not the reply without a value, not a tie. Audio
    that is nothing like an allowed reply (edit distance over max_cer of its length) is wrong."""
    cands = reply_candidates(question)
    text = " ".join(transcript.split())
    if not cands or not text:
        return False
    replies = [" ".join(reply.replace(".", " ").split()) for _, reply in cands]
    dist = [ctc.edit_distance(text, r) for r in replies]
    best = min(dist)
    if best > max_cer * len(replies[dist.index(best)]):
        return False
    plausible = [i for i, d in enumerate(dist) if d <= best + slack]
    if scores is None:
        plausible = [i for i in plausible if dist[i] == best]
        return len(plausible) == 1 and cands[plausible[0]][0] == answer
    top = max(scores[i] for i in plausible)
    winners = [i for i in plausible if scores[i] == top]
    return len(winners) == 1 and cands[winners[0]][0] == answer


@torch.no_grad()
def judge_wavs(asr, wavs, questions, answers):
    """Judge each clip, cut to its voiced stretch (trim): the acoustic model's posteriors give its greedy transcript and the CTC
    likelihood of every allowed reply (constrained recognition: the judge knows what may be said,
    never which of it is true). -> (list of bool, transcripts)."""
    oks, hyps = [], []
    for wav, q, a in zip(wavs, questions, answers):
        wav = trim(torch.as_tensor(wav).float())
        if wav.numel() < 400 or wav.abs().max() == 0:
            oks.append(False)
            hyps.append("")
            continue
        _, lp = asr.posteriors(wav)
        lp = lp.float().cpu()
        hyp = ctc.decode_ids(ctc.greedy_decode(lp[None])[0])
        cands = reply_candidates(q)
        targets = [ctc.encode_text(" ".join(r.replace(".", " ").split())) for _, r in cands]
        scores = None
        if cands:
            n = len(targets)
            scores = (-F.ctc_loss(lp[:, None].expand(-1, n, -1), torch.tensor([i for t in targets for i in t]),
                                  torch.full((n,), lp.shape[0]), torch.tensor([len(t) for t in targets]),
                                  blank=ctc.BLANK, reduction="none", zero_infinity=True)).tolist()
        oks.append(judge(hyp, q, a, scores))
        hyps.append(hyp)
    return oks, hyps
