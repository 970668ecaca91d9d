"""
CTC: what every CTC model in nanosdm shares.

Connectionist Temporal Classification (Graves et al. 2006) trains a frame classifier without any
alignment: every frame predicts a symbol or "blank", and the loss sums the probability of every
frame labelling that collapses (merge repeats, then drop blanks) to the reference. Decoding is
the same collapse applied to the best frame labels (greedy) or to a few running prefixes (beam).

This file holds the alphabet (and normalize_transcript, which writes any transcript in it), the
loss written out, forced alignment (the best path through a known transcript: when each symbol
was said), greedy and prefix beam decoding, and a character n-gram LM that the beam can fuse
with the acoustic scores (shallow fusion). The recognizer of stage `asr` (asr.py) is built on
them; LLaMA-Omni's speech decoder, CTC over units instead of characters, reuses the decoding
(SpeechDecoderCTC, at the end).
"""
import collections
import math
import re
import unicodedata

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


# Transcripts from elsewhere (LibriSpeech's "HE PAID $42 FOR THE 1ST ONE."; curly quotes, dashes,
# accents) are written in words the recognizer spells: numerals become the words a reader says.
ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = [(10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand")]
ORDINAL_WORDS = dict(one="first", two="second", three="third", five="fifth", eight="eighth",
                     nine="ninth", twelve="twelfth")
SYMBOL_WORDS = {"%": " percent ", "&": " and ", "+": " plus ", "=": " equals ", "@": " at "}
UNICODE_PUNCT = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u2032": "'", "`": "'",
                               "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-", "\u2212": "-",
                               "\u00df": "ss", "\u00e6": "ae", "\u0153": "oe", "\u00f8": "o"})
# "$1,000.50", "42", "21st", "1990s": thousands commas only in groups of three ("1,2,3" is a list)
NUMBER_RE = re.compile(r"(\$?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:(st|nd|rd|th|s)\b)?", re.IGNORECASE)


def number_words(n):
    """42 -> "forty two", 1905 -> "one thousand nine hundred five" (no "and": readers differ)."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for scale, name in SCALES:
        if n >= scale:
            rest = n % scale
            return number_words(n // scale) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def year_words(n):
    """How a four-digit year is said: 1984 -> "nineteen eighty four", 1805 -> "eighteen oh five",
    1900 -> "nineteen hundred", 2007 -> "two thousand seven"."""
    hi, lo = divmod(n, 100)
    if lo == 0:
        return number_words(hi) + " hundred"
    return number_words(hi) + " " + (("oh " + ONES[lo]) if lo < 10 else number_words(lo))


def ordinal_words(words):
    """ "twenty one" -> "twenty first", "forty" -> "fortieth"."""
    head, _, last = words.rpartition(" ")
    last = ORDINAL_WORDS.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return (head + " " + last).strip()


def _say_number(m):
    dollar, digits, frac, suffix = m.group(1), m.group(2).replace(",", ""), m.group(3), (m.group(4) or "").lower()
    n = int(digits)
    if suffix in ("st", "nd", "rd", "th"):
        words = ordinal_words(number_words(n))
    elif frac is None and not dollar and len(digits) == 4 and (1100 <= n <= 1999 or 2010 <= n <= 2099):
        words = year_words(n)  # a bare four-digit number in these ranges is almost always a year
    elif len(digits) > 1 and digits[0] == "0":
        words = " ".join(ONES[int(d)] for d in digits)  # "007", a code or a phone number: digit by digit
    else:
        words = number_words(n)
    if frac is not None:
        words += " point " + " ".join(ONES[int(d)] for d in frac)
    if suffix == "s":  # "1990s" -> "nineteen nineties", "5s" -> "fives"
        words = words[:-1] + "ies" if words.endswith("y") else words + ("es" if words.endswith("x") else "s")
    if dollar:
        words += " dollar" + ("" if n == 1 and frac is None else "s")
    return " " + words + " "


def normalize_transcript(text):
    """Any transcript -> the recognizer's alphabet, as words a reader would say: lower case,
    numerals spelled out ("42" -> "forty two", "1st" -> "first", "1984" -> "nineteen eighty
    four", "$3.50" -> "three point five zero dollars"), accents dropped (cafe), curly quotes
    straightened, hyphens and dashes between words, apostrophes kept only inside a word
    ("don't", not "'tis'" quotes), every other symbol gone. What is left of the alphabet is
    letters, the apostrophe and single spaces: never digits (normalize_text keeps those)."""
    text = unicodedata.normalize("NFKD", str(text)).lower().translate(UNICODE_PUNCT)
    text = "".join(c for c in text if not unicodedata.combining(c))
    for symbol, words in SYMBOL_WORDS.items():
        text = text.replace(symbol, words)
    text = NUMBER_RE.sub(_say_number, text)
    text = re.sub(r"[^a-z' ]", " ", text)
    words = (w.strip("'") for w in text.split())  # quotes around words, not apostrophes in them
    return " ".join(w for w in words if w)


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


def forced_align(log_probs, targets, blank=BLANK):
    """CTC forced alignment: the single best frame labelling (Viterbi) that collapses to the
    known targets. log_probs [T, C] (log-softmax), targets: a list of ids ->
    (spans LongTensor [L, 2], log-prob of that path): label i occupies frames
    spans[i, 0] <= t < spans[i, 1]; the frames between spans are blanks.
    The states and moves are ctc_nll's (stay, step, skip a blank between two different
    symbols) with max in place of logsumexp, and each state remembers which move won
    (0, 1 or 2 states back): one vector operation over all the states per frame, then one walk
    back from the last label or the blank after it."""
    lp = torch.as_tensor(log_probs).detach().float().cpu().numpy()
    targets = [int(i) for i in targets]
    T, L = lp.shape[0], len(targets)
    bad = sorted({i for i in targets if i == blank or not 0 <= i < lp.shape[1]})
    if bad:
        raise ValueError(f"forced_align: target ids {bad} are the blank ({blank}) or outside the "
                         f"{lp.shape[1]} symbols of the log-probs (normalise the transcript first)")
    # a symbol needs a frame, and a doubled symbol ("ll") a blank frame between its two
    need = L + sum(a == b for a, b in zip(targets, targets[1:]))
    if need > T:
        raise ValueError(f"forced_align: {L} symbols need at least {need} frames, the audio gives {T}: "
                         f"the transcript is longer than the audio can hold (or belongs to another clip)")
    ext = np.full(2 * L + 1, blank)
    ext[1::2] = targets
    S = len(ext)
    can_skip = np.zeros(S, dtype=bool)
    can_skip[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])
    emit = lp[:, ext]                       # [T, S]: each state's log-prob at each frame
    score = np.full(S, -np.inf)
    score[:2] = emit[0, :2]                 # a path starts on the first blank or the first symbol
    back = np.zeros((T, S), dtype=np.int8)  # how many states back the best move came from
    moves = np.full((3, S), -np.inf)
    for t in range(1, T):
        moves[0] = score
        moves[1, 1:] = score[:-1]
        moves[2, 2:] = np.where(can_skip[2:], score[:-2], -np.inf)
        back[t] = moves.argmax(0)           # ties go to staying: boundaries come as late as they can
        score = moves[back[t], np.arange(S)] + emit[t]
    s = S - 1 if L == 0 or score[S - 1] >= score[S - 2] else S - 2
    best = float(score[s])
    if not np.isfinite(best):
        raise ValueError("forced_align: no path has a finite log-prob (a target symbol's log-prob is -inf "
                         "wherever it could go)")
    states = np.empty(T, dtype=np.int64)
    for t in range(T - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    label_states = np.arange(1, S, 2)       # the path visits every symbol state, in order
    spans = np.stack([np.searchsorted(states, label_states, "left"),
                      np.searchsorted(states, label_states, "right")], 1)
    return torch.from_numpy(spans).long().reshape(L, 2), best


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


# -----------------------------------------------------------------------------
# scoring a transcript

def edit_distance(ref, hyp):
    """Levenshtein distance between two sequences (substitutions, insertions, deletions cost 1)."""
    prev = list(range(len(hyp) + 1))  # distances from ref[:0] to every hyp prefix
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]
