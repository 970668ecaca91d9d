"""
CTC: what every CTC model in nanosdm shares.

Connectionist Temporal Classification (Graves et al. 2006) trains a frame classifier without any
alignment: every frame predicts a symbol or "blank", and the loss sums the probability of every
frame labelling that collapses (merge repeats, then drop blanks) to the reference. Decoding is
the same collapse applied to the best frame labels (greedy) or to a few running prefixes (beam).

This file holds the alphabet, the loss written out, greedy and prefix beam decoding, and a
character n-gram LM that the beam can fuse with the acoustic scores (shallow fusion). The
recognizer of stage `asr` (asr.py) is built on them; LLaMA-Omni's speech decoder, CTC over units
instead of characters, reuses the decoding (SpeechDecoderCTC, at the end).
"""
import collections
import math
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanosdm.transformer import Transformer


# -----------------------------------------------------------------------------
# the alphabet: id 0 is the CTC blank, id i >= 1 is CHARS[i - 1]

BLANK = 0
CHARS = " 'abcdefghijklmnopqrstuvwxyz0123456789"
VOCAB_SIZE = len(CHARS) + 1
_CHAR_ID = {c: i + 1 for i, c in enumerate(CHARS)}


def normalize_text(text):
    """What is scored, for references and hypotheses alike: lower case, letters, digits,
    apostrophes, single spaces. "Hello, World!" -> "hello world"."""
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def encode_text(text):
    return [_CHAR_ID[c] for c in normalize_text(text)]


def decode_ids(ids):
    return "".join(CHARS[i - 1] for i in ids if i != BLANK)


# -----------------------------------------------------------------------------
# CTC itself

def ctc_nll(log_probs, target, blank=BLANK):
    """-log p(target | frames) by the CTC forward algorithm, written out to show what F.ctc_loss
    computes (the tests check the two agree). log_probs [T, C] (log-softmax), target: list of ids.
    States are the target with blanks around every symbol: _ a _ b _ (2L + 1 of them). A path
    stays on its state, moves to the next, or skips a blank between two different symbols."""
    ext = [blank]
    for s in target:
        ext += [s, blank]
    dev, dt = log_probs.device, log_probs.dtype
    S, neg_inf = len(ext), torch.tensor(float("-inf"), dtype=dt, device=dev)
    ext_t = torch.tensor(ext, device=dev)
    can_skip = torch.zeros(S, dtype=torch.bool, device=dev)
    can_skip[2:] = (ext_t[2:] != blank) & (ext_t[2:] != ext_t[:-2])
    alpha = torch.full((S,), float("-inf"), dtype=dt, device=dev)
    alpha[0] = log_probs[0, ext[0]]
    if S > 1:
        alpha[1] = log_probs[0, ext[1]]
    for t in range(1, log_probs.shape[0]):
        stay = alpha
        step = torch.cat([neg_inf[None], alpha[:-1]])
        skip = torch.where(can_skip, torch.cat([neg_inf.repeat(2), alpha[:-2]]), neg_inf)
        alpha = torch.logsumexp(torch.stack([stay, step, skip]), 0) + log_probs[t, ext_t]
    # a path ends on the last symbol or on the blank after it
    return -torch.logsumexp(alpha[-2:] if S > 1 else alpha[-1:], 0)


def greedy_decode(log_probs, lengths=None, blank=BLANK):
    """Best label per frame, merge repeats, drop blanks. log_probs [B, T, C] -> list of id lists."""
    best = log_probs.argmax(-1).tolist()
    lengths = lengths.tolist() if lengths is not None else [len(b) for b in best]
    out = []
    for row, n in zip(best, lengths):
        ids, prev = [], blank
        for k in row[:n]:
            if k != prev and k != blank:
                ids.append(k)
            prev = k
        out.append(ids)
    return out


def prefix_beam_search(log_probs, beam=8, blank=BLANK, prune=-8.0, lm=None, lm_weight=0.5, char_bonus=1.0):
    """CTC prefix beam search over one utterance, log_probs [T, C] -> best id list.
    Each prefix keeps two scores: paths ending in blank (pb) and in its last symbol (pnb), since a
    repeated symbol extends the prefix only after a blank. Symbols with log-prob below `prune` at
    a frame are not tried (they cannot win, and skipping them keeps this fast in Python).
    With a CharLM (shallow fusion) a prefix is ranked by its acoustic score plus, for each of its
    characters, lm_weight * log P_lm(char | the characters before) + char_bonus; the bonus offsets
    the LM's cost per character, which would otherwise favour dropping letters."""
    lp = log_probs.float().cpu()
    logadd = np.logaddexp
    beams = {(): (0.0, -math.inf)}  # prefix -> (log pb, log pnb), acoustic only
    fused = {(): 0.0}                # prefix -> its language-model score (0 without an LM)

    def lm_step(prefix, c):
        if lm is None:
            return 0.0
        return lm_weight * lm.log_probs(decode_ids(prefix[-lm.order:]))[c] + char_bonus

    for t in range(lp.shape[0]):
        row = lp[t].tolist()
        cands = [c for c in range(len(row)) if row[c] > prune and c != blank]
        nxt = {}
        for prefix, (pb, pnb) in beams.items():
            total = logadd(pb, pnb)
            b, nb = nxt.get(prefix, (-math.inf, -math.inf))
            nb_same = pnb + row[prefix[-1]] if prefix else -math.inf  # repeat merges into prefix
            nxt[prefix] = (logadd(b, total + row[blank]), logadd(nb, nb_same))
            for c in cands:
                new = prefix + (c,)
                if new not in fused:
                    fused[new] = fused[prefix] + lm_step(prefix, c)
                b, nb = nxt.get(new, (-math.inf, -math.inf))
                # the same symbol again needs a blank in between, else it merged above
                ext = pb + row[c] if prefix and c == prefix[-1] else total + row[c]
                nxt[new] = (b, logadd(nb, ext))
        beams = dict(sorted(nxt.items(), key=lambda kv: -logadd(*kv[1]) - fused[kv[0]])[:beam])
    end = (lambda p: lm_weight * lm.log_probs(decode_ids(p[-lm.order:]))[CharLM.END]) if lm else (lambda p: 0.0)
    return list(max(beams.items(), key=lambda kv: logadd(*kv[1]) + fused[kv[0]] + end(kv[0]))[0])


class CharLM:
    """A character n-gram language model with interpolated Witten-Bell smoothing: the prior over
    spellings that a CTC recognizer lacks. It learns, from text alone, that the creature is a
    "keter" and not a "katar" when the audio cannot tell. Every probability mixes the counts after
    the longest context with the next shorter context's estimate, and trusts a context more the
    more often it was seen relative to how many different characters followed it.
    P(c | h) = (n(h, c) + u(h) P(c | h')) / (n(h) + u(h)), n: counts, u(h): distinct followers,
    h' = h without its first character; below the empty context, uniform.
    The symbols are the recognizer's ids; the blank's id stands for the end of the sentence."""
    END = BLANK
    PAD = "^"   # before a sentence's first character

    def __init__(self, texts, order=6):
        self.order = order  # characters of context (an (order+1)-gram model)
        self.counts = {}    # context string -> {id: count}
        for text, weight in collections.Counter(normalize_text(t) for t in texts).items():
            padded = self.PAD * order + text
            for i, c in enumerate(encode_text(text) + [self.END]):
                history = padded[i:i + order]
                for n in range(order + 1):
                    follow = self.counts.setdefault(history[order - n:], {})
                    follow[c] = follow.get(c, 0) + weight
        self._cache = {}

    def log_probs(self, history):
        """log P(next id | history string) as a numpy array [VOCAB_SIZE] (id 0: the end)."""
        history = (self.PAD * self.order + history)[-self.order:]
        if history not in self._cache:
            p = np.full(VOCAB_SIZE, 1.0 / VOCAB_SIZE)
            for n in range(self.order + 1):
                follow = self.counts.get(history[self.order - n:])
                if follow is None:  # a longer context was never seen either
                    break
                total, types = sum(follow.values()), len(follow)
                seen = np.zeros(VOCAB_SIZE)
                seen[list(follow)] = list(follow.values())
                p = (seen + types * p) / (total + types)
            self._cache[history] = np.log(p)
        return self._cache[history]

    def state_dict(self):
        return dict(order=self.order, counts=self.counts)

    @classmethod
    def from_state_dict(cls, state):
        lm = cls([], state["order"])
        lm.counts = state["counts"]
        return lm


# -----------------------------------------------------------------------------
# LLaMA-Omni's speech decoder: CTC over speech units, read off the text LM's hidden states

def upsample(states, lengths, lam, target_lengths=None):
    """Repeat every state lam times: [B, N, D] -> [B, lam N, D] (state i fills positions lam i ..
    lam i + lam - 1), lengths -> lam lengths. CTC can only emit as many symbols as it has
    positions, so with target_lengths (units per row) lam x text tokens must reach the units."""
    out_lengths = lengths * lam
    if target_lengths is not None:
        short = (out_lengths < target_lengths).nonzero()
        if len(short):
            i = int(short[0])
            n, u = int(lengths[i]), int(target_lengths[i])
            raise ValueError(f"lambda={lam} x {n} text tokens = {lam * n} positions < {u} units: CTC cannot "
                             f"emit them; raise lambda to at least {math.ceil(u / max(n, 1))}")
    return states.repeat_interleave(lam, dim=1), out_lengths


def collapse(ids, blank):
    """Frame labels -> units: merge repeats, drop blanks ([7, 7, b, 7, 3, 3] -> [7, 7, 3])."""
    out, prev = [], blank
    for k in ids:
        if k != prev and k != blank:
            out.append(k)
        prev = k
    return out


class SpeechDecoderCTC(nn.Module):
    """The LLM's hidden states of its answer tokens -> a projection -> upsampled lam times by
    repetition -> a small causal transformer -> linear to n_units + 1 (the blank, last id), trained
    with CTC against the deduplicated units of the spoken answer. It is non-autoregressive: all the
    units of the states so far come out of one pass, so it runs beside the LLM as the text is
    written. Causal attention makes the frames of the first tokens independent of the later ones:
    streamed units equal offline units."""

    def __init__(self, in_dim, n_units, lam=25, n_layer=2, n_head=4, d_model=128, max_tokens=64):
        super().__init__()
        self.config = dict(in_dim=in_dim, n_units=n_units, lam=lam, n_layer=n_layer, n_head=n_head,
                           d_model=d_model, max_tokens=max_tokens)
        self.lam, self.blank = lam, n_units
        self.proj = nn.Linear(in_dim, d_model)
        self.transformer = Transformer(n_layer, n_head, d_model, causal=True, max_seq_len=lam * max_tokens)
        self.head = nn.Linear(d_model, n_units + 1)

    def forward(self, states, lengths, target_lengths=None):
        """states [B, N, in_dim] (rows padded after lengths) -> (log-probs [B, lam N, n_units + 1], lengths)."""
        x, out_lengths = upsample(self.proj(states), lengths, self.lam, target_lengths)
        return F.log_softmax(self.head(self.transformer(x)).float(), -1), out_lengths

    def loss(self, states, lengths, targets):
        """CTC loss per unit, averaged over rows. targets: a list of unit-id tensors (deduplicated)."""
        tlen = torch.tensor([len(t) for t in targets])
        lp, out_lengths = self(states, lengths, tlen.to(lengths.device))
        return F.ctc_loss(lp.transpose(0, 1), torch.cat(list(targets)).long(), out_lengths.cpu(), tlen,
                          blank=self.blank, reduction="mean", zero_infinity=True)

    @torch.no_grad()
    def units(self, states, lengths=None):
        """Greedy: states [B, N, in_dim] -> a list of unit-id lists (collapsed)."""
        lengths = lengths if lengths is not None else torch.full((len(states),), states.shape[1], device=states.device)
        lp, out_lengths = self(states, lengths)
        return greedy_decode(lp, out_lengths, blank=self.blank)

    @torch.no_grad()
    def stream(self, states, emitted):
        """LLaMA-Omni's streaming rule, after each new text token: decode all the states so far
        ([N, in_dim], batch 1) greedily, collapse, and return the units not emitted yet
        (emitted: how many were). Rerunning the whole prefix costs little: the decoder is small
        and answers are short."""
        units = self.units(states[None])[0]
        return units[emitted:]
