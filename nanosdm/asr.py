"""
Stage `asr`: CTC speech recognition, the honest judge of speech in nanosdm.

    wav 16 kHz -> log-mel 80 x 100 Hz -> per-clip normalisation (-> SpecAugment in training)
      -> 2 convolutions, the second strided (3x: 33 Hz, 30 ms per frame) -> the shared Transformer
         (bidirectional, padding mask) -> linear -> blank + 38 characters -> F.ctc_loss

The loss, the decoding and the character LM fused into the beam are in ctc.py.
Why characters, not the tokenizer's BPE pieces: the recognizer must spell invented names
("kotan") that a text tokenizer splits arbitrarily, and 39 symbols need no tokenizer checkpoint,
so the recognizer stays a judge independent of every other stage.
Why 30 ms frames: CTC needs a frame per symbol, plus a blank between doubled letters. The fast
SpokenWorld voices say up to 24 characters a second: 40 ms frames (the usual 4x) would leave some
clips almost no blanks; 30 ms frames keep every clip under 75% symbols.

The stage trains on every SpokenWorld turn of both speakers (plus scrambled-word turns, see
scrambled_clips), reports character and word error rates on the unseen-voice split (user turns),
and, when out/<preset>/codec.pt exists, the same rates on codec-decoded audio of the same clips:
the codec's intelligibility figure. The error rates and that evaluation live in eval/metrics.py.

    asr = ASR.load("out/tiny/asr.pt")
    text = asr.transcribe(wav)           # [T] at 16 kHz -> str; beam=8 adds the LM
    align_words(asr, wav, "He paid $42.")  # -> [("he", 0.03, 0.21), ("paid", ...), ("forty", ...), ...]
"""
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from nanosdm import utils
from nanosdm.corpus import audio, realdata, spokenworld
from nanosdm.ctc import (BLANK, CHARS, VOCAB_SIZE, CharLM, decode_ids, encode_text, forced_align, greedy_decode,
                         normalize_text, normalize_transcript, prefix_beam_search)
from nanosdm.transformer import Transformer

# -----------------------------------------------------------------------------
# features and SpecAugment

HOP = 160                 # 10 ms log-mel frames at 16 kHz
N_FFT = 400               # 25 ms analysis windows
N_MELS = 80
SUBSAMPLE = 3             # encoder frames every 30 ms (33 Hz): see the top of the file
MIN_SAMPLES = N_FFT       # one analysis window: anything shorter holds no speech
MAX_TRAIN_S = 30.0        # longest training clip of a real corpus: 1000 encoder frames (max_seq_len 1024)


def pad_batch(wavs):
    """A list of 1-d waveforms -> zero-padded [B, T] and lengths [B]."""
    lengths = torch.tensor([len(w) for w in wavs])
    x = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        x[i, :len(w)] = torch.as_tensor(w, dtype=torch.float32)
    return x, lengths


def features(wav, lengths):
    """wav [B, T] -> normalised log-mel [B, N_MELS, frames], frame lengths [B]. Each utterance is
    centred per mel band and scaled to unit variance over its own frames, so loudness and the
    microphone (or a codec) shift nothing; padded frames are exactly 0."""
    # zeros after the end (not the STFT's reflection): a clip alone and padded in a batch then
    # give the same frames, so transcripts do not depend on the batch
    feat = audio.log_mel(F.pad(wav, (0, N_FFT // 2)), n_mels=N_MELS, n_fft=N_FFT, hop=HOP)
    flen = torch.div(lengths, HOP, rounding_mode="floor") + 1
    feat = feat[..., :int(flen.max())]
    valid = (torch.arange(feat.shape[-1], device=feat.device)[None] < flen.to(feat.device)[:, None])[:, None]
    n = valid.sum(-1, keepdim=True)
    mean = (feat * valid).sum(-1, keepdim=True) / n
    centred = (feat - mean) * valid
    std = (centred.pow(2).sum((1, 2), keepdim=True) / (n.sum(1, keepdim=True) * N_MELS)).sqrt()
    return centred / (std + 1e-5), flen


def spec_augment(feat, flen, gen, warp=0.15, freq_masks=2, freq_width=15, time_masks_per_s=1.0, time_width=8):
    """SpecAugment (Park et al. 2019), with a frequency warp instead of its time warp: stretch
    each clip's mel axis by up to +-warp (a longer or shorter vocal tract: a new voice's formants
    move along that axis), then zero (= the mean, after normalising) a few mel bands and a few
    short spans of frames, so the model cannot lean on any one band or instant. Spans are short
    because utterances here are short (1-4 s)."""
    B, M, T = feat.shape
    scale = 1 + (torch.rand(B, 1, generator=gen) * 2 - 1) * warp
    src = (torch.arange(M) * scale).clamp(max=M - 1).to(feat.device)  # [B, M]: read band src for band m
    lo = src.floor().long()
    frac = (src - lo)[..., None]
    pick = lambda idx: feat.gather(1, idx[..., None].expand(B, M, T))
    feat = pick(lo) * (1 - frac) + pick((lo + 1).clamp(max=M - 1)) * frac
    r = lambda hi: int(torch.randint(0, max(1, hi), (1,), generator=gen))
    for i in range(B):
        for _ in range(freq_masks):
            w = r(freq_width + 1)
            f0 = r(M - w + 1)
            feat[i, f0:f0 + w] = 0
        n = int(flen[i])
        for _ in range(round(time_masks_per_s * n * HOP / audio.SAMPLE_RATE)):
            w = r(time_width + 1)
            t0 = r(n - w + 1)
            feat[i, :, t0:t0 + w] = 0
    return feat


# -----------------------------------------------------------------------------
# the recognizer

def conv_lengths(flen):
    # kernel 2S - 1, stride S, padding S - 1: frame i looks at log-mel frames S*i -(S-1) .. S*i +(S-1)
    return torch.div(flen - 1, SUBSAMPLE, rounding_mode="floor") + 1


class ASR(nn.Module):
    def __init__(self, n_layer=4, n_head=4, d_model=192, dropout=0.1, max_seq_len=1024):
        super().__init__()
        self.config = dict(n_layer=n_layer, n_head=n_head, d_model=d_model, dropout=dropout,
                           max_seq_len=max_seq_len, chars=CHARS, n_mels=N_MELS, hop=HOP)
        # each encoder frame sees 7 log-mel frames (70 ms) through the two convolutions
        self.conv1 = nn.Conv1d(N_MELS, d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, 2 * SUBSAMPLE - 1, stride=SUBSAMPLE, padding=SUBSAMPLE - 1)
        self.transformer = Transformer(n_layer, n_head, d_model, causal=False, max_seq_len=max_seq_len,
                                       dropout=dropout)
        self.head = nn.Linear(d_model, VOCAB_SIZE)
        self.lm, self.lm_weight, self.char_bonus = None, 0.0, 0.0  # see attach_lm

    def attach_lm(self, lm, lm_weight, char_bonus):
        """A CharLM that beam search (transcribe(beam > 1)) fuses with the acoustic scores."""
        self.lm, self.lm_weight, self.char_bonus = lm, lm_weight, char_bonus
        return self

    def forward(self, feat, flen):
        """Normalised log-mel [B, N_MELS, frames] -> log-probs [B, T, VOCAB_SIZE] (fp32), lengths [B]."""
        valid = torch.arange(feat.shape[-1], device=feat.device)[None, None] < flen.to(feat.device)[:, None, None]
        # zero conv1's output on padded frames, as conv2's own padding would be for a clip alone
        x = F.gelu(self.conv1(feat)) * valid
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, T, D]
        lengths = conv_lengths(flen).to(x.device)
        mask = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
        h = self.transformer(x, attn_mask=mask)
        return F.log_softmax(self.head(h).float(), dim=-1), lengths

    def loss(self, feat, flen, targets):
        """CTC loss of a padded batch, per target symbol and averaged over clips (F.ctc_loss's
        "mean"). feat, flen: from features(); targets: a list of id lists."""
        log_probs, out_len = self(feat, flen)
        flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
        tlen = torch.tensor([len(t) for t in targets], dtype=torch.long)
        # zero_infinity: a clip too fast for its frames (impossible alignment) adds no gradient
        return F.ctc_loss(log_probs.transpose(0, 1), flat, out_len.cpu(), tlen, blank=BLANK,
                          reduction="mean", zero_infinity=True)

    @torch.no_grad()
    def posteriors(self, wav):
        """One waveform [T] -> (log-mel [N_MELS, frames], log-probs [T', VOCAB_SIZE]), for plots."""
        dev = self.head.weight.device
        wav = torch.as_tensor(wav, dtype=torch.float32).to(dev)
        lengths = torch.tensor([wav.shape[-1]], device=dev)
        feat, flen = features(wav[None], lengths)
        lp, _ = self(feat, flen)
        return audio.log_mel(wav, n_mels=N_MELS, n_fft=N_FFT, hop=HOP), lp[0]

    @torch.no_grad()
    def transcribe(self, wav, beam=0, use_lm=True, batch_size=32, max_chunk_s=12.0):
        """Speech at 16 kHz -> text. wav: a tensor [T] (-> str), or a list of tensors or a batch
        [B, T] (-> list of str). beam=0 decodes greedily, beam>1 with prefix beam search, fused
        with the attached CharLM unless use_lm=False.
        Longer recordings are cut at their quietest moments into pieces of at most max_chunk_s
        (training clips are single turns of a few seconds)."""
        single = torch.is_tensor(wav) and wav.dim() == 1
        wavs = [wav] if single else list(wav)
        for i, w in enumerate(wavs):
            w = torch.as_tensor(w)
            if w.dim() != 1 or w.numel() < MIN_SAMPLES:
                raise audio.AudioError(f"transcribe: clip {i} must be a mono waveform of at least "
                                       f"{MIN_SAMPLES} samples (25 ms), got shape {tuple(w.shape)}")
            if not torch.isfinite(w).all():
                raise audio.AudioError(f"transcribe: clip {i} holds NaN or infinite samples")
        was_training, dev = self.training, self.head.weight.device
        self.eval()
        pieces = [(i, c) for i, w in enumerate(wavs) for c in split_on_silence(torch.as_tensor(w).float(), max_chunk_s)]
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k][1]))  # similar lengths: less padding
        texts = [""] * len(pieces)
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            x, lengths = pad_batch([pieces[k][1] for k in rows])
            feat, flen = features(x.to(dev), lengths.to(dev))
            with utils.autocast(str(dev)):
                lp, out_len = self(feat, flen)
            if beam > 1:
                lm = self.lm if use_lm else None
                ids = [prefix_beam_search(lp[j, :out_len[j]], beam, lm=lm, lm_weight=self.lm_weight,
                                          char_bonus=self.char_bonus) for j in range(len(rows))]
            else:
                ids = greedy_decode(lp, out_len)
            for k, seq in zip(rows, ids):
                texts[k] = decode_ids(seq)
        self.train(was_training)
        out = [" ".join(t for (i, _), t in zip(pieces, texts) if i == n and t) for n in range(len(wavs))]
        return out[0] if single else out

    @classmethod
    def load(cls, path, device="cpu"):
        ckpt = utils.load_checkpoint(path, device)
        cfg = ckpt["config"]
        if cfg["chars"] != CHARS or cfg["n_mels"] != N_MELS or cfg["hop"] != HOP:
            raise ValueError(f"{path}: recognizer built for another alphabet or front end")
        model = cls(cfg["n_layer"], cfg["n_head"], cfg["d_model"], cfg["dropout"], cfg["max_seq_len"])
        model.load_state_dict(ckpt["model"])
        if ckpt.get("lm"):
            model.attach_lm(CharLM.from_state_dict(ckpt["lm"]), ckpt["lm_weight"], ckpt["char_bonus"])
        return model.to(device).eval()


def split_on_silence(wav, max_s, min_s=2.0):
    """Cut a long waveform into pieces of at most max_s seconds, each cut at the quietest 100 ms
    between min_s and max_s into the rest, so words are rarely split."""
    sr, pieces, start = audio.SAMPLE_RATE, [], 0
    max_n, min_n = int(max_s * sr), int(min_s * sr)
    energy = F.avg_pool1d(wav[None, None] ** 2, HOP * 10, stride=HOP, padding=HOP * 5,
                          count_include_pad=False)[0, 0] if len(wav) > max_n else None
    while len(wav) - start > max_n:
        # the last piece keeps at least min_n samples too
        lo, hi = (start + min_n) // HOP, (min(start + max_n, len(wav) - min_n)) // HOP
        cut = (lo + int(energy[lo:hi].argmin())) * HOP
        pieces.append(wav[start:cut])
        start = cut
    pieces.append(wav[start:])
    return pieces


# -----------------------------------------------------------------------------
# forced alignment: when each word of a known transcript is said (for corpora without timings)

ENCODER_FRAME_S = SUBSAMPLE * HOP / audio.SAMPLE_RATE   # 30 ms: one encoder frame, centred on frame i * ENCODER_FRAME_S
# Where a word's boundaries lie relative to its characters' frames on the best CTC path. The
# first character's first frame comes about one frame after the word's onset (CTC emits a symbol
# once it has heard some of it), the last character's last frame ends with the word. Fitted on
# the train split of SpokenWorld (true timings from eSpeak; median signed errors -35 and -5 ms),
# rounded to the frame grid. A space label has at least one frame between two words, so a word
# never starts before the previous one ends.
WORD_START_FRAMES = -1
WORD_END_FRAMES = 0
ALIGN_WINDOW_S = 12.0     # longer clips are run through the encoder in overlapping windows
ALIGN_OVERLAP_S = 2.0


@torch.no_grad()
def frame_log_probs(model, wav, window_s=ALIGN_WINDOW_S, overlap_s=ALIGN_OVERLAP_S):
    """One 16 kHz waveform [T] -> CTC log-probs [frames, VOCAB_SIZE], frame i centred at
    i * ENCODER_FRAME_S seconds. A clip longer than window_s goes through in windows that overlap by
    overlap_s; each frame is taken from the window where it lies farthest from an edge. Windows
    start on the frame grid (multiples of SUBSAMPLE * HOP samples), so a window's frame i is
    the clip's frame start + i."""
    was_training, dev = model.training, model.head.weight.device
    model.eval()
    wav = torch.as_tensor(wav, dtype=torch.float32)
    n, step = len(wav), SUBSAMPLE * HOP
    total = int(conv_lengths(torch.tensor(n // HOP + 1)))
    win = max(1, int(window_s / ENCODER_FRAME_S))
    hop = max(1, win - int(overlap_s / ENCODER_FRAME_S))
    starts = list(range(0, max(total - win, 0) + hop, hop)) if total > win else [0]
    out = torch.empty(total, VOCAB_SIZE)
    for k, f0 in enumerate(starts):
        piece = wav[f0 * step: (f0 + win) * step + N_FFT].to(dev)  # + N_FFT: the last frame's full window
        feat, flen = features(piece[None], torch.tensor([len(piece)], device=dev))
        lp = model(feat, flen)[0][0].float().cpu()
        # keep [f0 + half the overlap with the previous window, up to half the overlap with the next)
        lo = 0 if k == 0 else (starts[k - 1] + win - f0) // 2
        hi = total - f0 if k == len(starts) - 1 else (f0 + win - starts[k + 1]) // 2 + starts[k + 1] - f0
        hi = min(hi, len(lp), total - f0)
        out[f0 + lo: f0 + hi] = lp[lo:hi]
    model.train(was_training)
    return out


def align_words(model, wav, text, sr=audio.SAMPLE_RATE):
    """Word timings of a known transcript: [(word, start_s, end_s), ...], one per word of
    ctc.normalize_transcript(text) (upper case, punctuation and numerals normalised: "42"
    gives the two words "forty two"), in order, never overlapping, within the clip. model: an
    ASR; wav [T] at sr Hz (resampled to 16 kHz)."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    if wav.dim() != 1 or not torch.isfinite(wav).all():
        raise audio.AudioError(f"align_words: wav must be a finite mono waveform [T], got shape {tuple(wav.shape)}")
    if sr != audio.SAMPLE_RATE:
        wav = torch.from_numpy(audio.resample(wav.numpy(), sr, audio.SAMPLE_RATE))
    words = normalize_transcript(text).split()
    if not words:
        raise ValueError(f"align_words: the transcript {text!r} holds no word to align")
    if len(wav) < MIN_SAMPLES:
        raise audio.AudioError(f"align_words: {len(wav)} samples is too short to hold {text!r}")
    ids = encode_text(" ".join(words))
    lp = frame_log_probs(model, wav)
    try:
        spans, _ = forced_align(lp, ids)
    except ValueError as e:
        raise ValueError(f"align_words: transcript {text!r} ({len(ids)} symbols) does not fit "
                         f"{len(wav) / audio.SAMPLE_RATE:.2f} s of audio ({len(lp)} frames of "
                         f"{ENCODER_FRAME_S * 1000:.0f} ms): {e}") from None
    spans = spans.tolist()
    duration = len(wav) / audio.SAMPLE_RATE
    out, k = [], 0
    for word in words:   # the word's characters are labels k .. k + len - 1, then a space
        first, last = spans[k], spans[k + len(word) - 1]
        start = min(max((first[0] + WORD_START_FRAMES) * ENCODER_FRAME_S, 0.0), duration)
        end = min(max((last[1] + WORD_END_FRAMES) * ENCODER_FRAME_S, start), duration)
        out.append((word, start, end))          # not rounded: a rounded end could pass the clip's end
        k += len(word) + 1
    return out


def alignment_errors(model, items):
    """How far align_words lands from known word timings. items: (wav 16 kHz [T], [(word,
    start_s, end_s), ...]) pairs (SpokenWorld turns: eSpeak's timings). An item whose reference
    words do not normalise one to one onto the aligned words is skipped and counted. Returns
    median |error| in ms of the starts, the ends and both, the 90th percentile of both, the
    number of words and skipped items, and the alignment time per item in ms."""
    starts, ends, skipped, n, t0 = [], [], 0, 0, time.time()
    for wav, ref in items:
        ref = [(normalize_transcript(w), s, e) for w, s, e in ref]
        if not ref or any(len(w.split()) != 1 for w, _, _ in ref):
            skipped += 1  # a numeral said as several words has one reference timing for them all
            continue
        got = align_words(model, wav, " ".join(w for w, _, _ in ref))
        starts += [g[1] - r[1] for g, r in zip(got, ref)]
        ends += [g[2] - r[2] for g, r in zip(got, ref)]
        n += 1
    seconds = time.time() - t0
    err = lambda x: np.abs(np.asarray(x, dtype=np.float64)) * 1000
    both = np.concatenate([err(starts), err(ends)])
    median = lambda x: round(float(np.median(x)), 1) if len(x) else float("nan")
    return dict(align_start_ms=median(err(starts)), align_end_ms=median(err(ends)), align_ms=median(both),
                align_p90_ms=round(float(np.percentile(both, 90)), 1) if len(both) else float("nan"),
                align_words=len(starts), align_items=n, align_skipped=skipped,
                align_ms_per_item=round(seconds / max(n, 1) * 1000, 1))


# -----------------------------------------------------------------------------
# data: SpokenWorld turns, both speakers

POOL_BATCHES = 20         # clips are sorted by length within pools of this many batches
SILENCE = 30              # |int16 sample| at or below this is silence (-61 dBFS)
TRIM_KEEP_S = 0.15        # silence kept after a training clip's last sound
INVENTED_SHARE = 0.25     # words of a scrambled turn that are new invented names, not corpus words


def trim_end(pcm):
    loud = (pcm.abs() > SILENCE).nonzero()
    return pcm[:int(loud[-1]) + int(TRIM_KEEP_S * audio.SAMPLE_RATE)] if len(loud) else pcm


def load_clips(data_dir, split, speaker=None, trim=False):
    """Every turn of a spoken split as (int16 waveform, normalised transcript). trim: cut the
    silence after the last sound down to TRIM_KEEP_S (eSpeak's end pause is 17% of the audio of
    a turn: training need not pay for it)."""
    from nanosdm.corpus.spokenworld import SpeechSplit
    clips = []
    for wav, turn in SpeechSplit(data_dir, split).utterances(speaker=speaker):
        text = normalize_text(turn["text"])
        pcm = (wav * 32768).round().short()  # the corpus is int16: exact, and half the memory
        pcm = trim_end(pcm) if trim else pcm
        if text and len(pcm) >= MIN_SAMPLES:
            clips.append((pcm, text))
    return clips


def scrambled_clips(data_dir, vocabulary, n, seed, processes=None):
    """n extra turns of *random* word sequences (the corpus's words and freshly invented names),
    spoken by the corpus's training voices. SpokenWorld's turns come from a few dozen templates,
    and a recognizer trained on them alone learns the templates: it then hears a held-out phrasing
    as the nearest template and spells a new name as a known one. Scrambled word order forces it
    to listen. eSpeak makes an hour of this in seconds; the unseen voices stay unseen."""
    import json
    import random
    from nanosdm.corpus import espeak, spokenworld
    with open(os.path.join(data_dir, "corpus.json")) as f:
        voices = json.load(f)["seen_voices"]
    rng = random.Random(seed)
    invent = lambda: rng.choice(spokenworld.SYLLABLES) + rng.choice(spokenworld.SYLLABLES) + rng.choice(spokenworld.CODAS)
    jobs = [dict(text=" ".join(rng.choice(vocabulary) if rng.random() >= INVENTED_SHARE else invent()
                               for _ in range(rng.randint(2, 8))),
                 voice=rng.choice(voices), rate=rng.randint(140, 210), pitch=rng.randint(25, 75))
            for _ in range(n)]
    clips = []
    for job, (wav, _, _) in tqdm(zip(jobs, espeak.synthesize_many(jobs, processes)), total=n,
                                 desc="asr scrambled turns", leave=False):
        clips.append((trim_end(torch.from_numpy(np.round(wav * 32767)).short()), normalize_text(job["text"])))
    return clips


def epoch_batches(lengths, batch_size, seed, epoch):
    """One epoch as batches of clips of similar length (little padding): shuffle, sort within
    pools, cut, shuffle the batches. A function of (seed, epoch) only, so a resumed run sees the
    batches an uninterrupted one would; the count is the same every epoch."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    pool, batches = batch_size * POOL_BATCHES, []
    for p in range(0, len(perm), pool):
        chunk = sorted(perm[p:p + pool], key=lambda i: lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


# -----------------------------------------------------------------------------
# training (stage `asr`; eval/metrics.py's evaluate_asr measures it)

def train(cfg, stop_step=None):
    """Train (or resume) the recognizer; returns its training figures for report.json.
    stop_step stops early as if the run were killed there (for the resume test)."""
    device, out_dir, seed = cfg["device"], cfg["out_dir"], cfg["seed"]
    if realdata.is_default(cfg):
        clips = load_clips(cfg["data_dir"], "train", trim=True)
        n_corpus = len(clips)
        if cfg["asr_scrambled_turns"]:
            vocabulary = sorted({w for _, t in clips for w in t.split()})
            clips += scrambled_clips(cfg["data_dir"], vocabulary, cfg["asr_scrambled_turns"], seed, cfg.get("workers") or None)
        lengths = [len(w) for w, _ in clips]
        targets = [encode_text(t) for _, t in clips]
    else:   # the speech_data setting's corpora, read from disk batch by batch; no scrambled turns
        speech = realdata.Speech(cfg)   # (they undo SpokenWorld's templates; real transcripts have none)
        clips = realdata.Clips(speech, MAX_TRAIN_S * audio.SAMPLE_RATE, MIN_SAMPLES, seed, trim_end)
        n_corpus, lengths, targets = len(clips), clips.lengths, clips.targets
    B, max_steps = cfg["asr_batch_size"], cfg["asr_max_steps"]
    n_batches = len(epoch_batches(lengths, B, seed, 0))
    hours = sum(lengths) / audio.SAMPLE_RATE / 3600
    print(f"asr: {n_corpus} corpus turns (both speakers) + {len(clips) - n_corpus} scrambled ones = {hours:.2f} h; "
          f"{max_steps} steps of {B} "
          f"= {max_steps / n_batches:.1f} epochs")

    model = ASR(cfg["asr_n_layer"], cfg["asr_n_head"], cfg["asr_d_model"], cfg["asr_dropout"]).to(device)
    params = list(model.parameters())
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg["asr_weight_decay"]),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    opt = torch.optim.AdamW(groups, lr=cfg["asr_lr"], betas=(0.9, 0.98))
    n_params = sum(p.numel() for p in params)
    print(f"asr model: {n_params / 1e6:.2f}M parameters")

    path = os.path.join(out_dir, "asr.pt")
    settings = utils.run_settings(cfg, "asr")   # a partial checkpoint resumes only into the same run
    ckpt = utils.resume(path, model, opt, device, max_steps, settings=settings)
    step, history = (ckpt["step"], ckpt["history"]) if ckpt else (0, {"train": []})
    utils.broadcast_module(model)                      # data parallel: every rank starts from rank 0's weights

    def save(lm=None):
        utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(),
                                         config=model.config, settings=settings, step=step, history=history,
                                         lm=lm and lm.state_dict(), lm_weight=cfg["asr_lm_weight"],
                                         char_bonus=cfg["asr_char_bonus"]))

    gen, epoch, batches = torch.Generator(), -1, None
    model.train()
    t0, audio_seconds = time.time(), 0.0
    pbar = tqdm(total=max_steps, initial=step, desc="asr", dynamic_ncols=True)
    while step < max_steps and (stop_step is None or step < stop_step):
        lr = utils.cosine_lr(step, max_steps, cfg["asr_lr"], cfg["asr_warmup"])
        for g in opt.param_groups:
            g["lr"] = lr
        if step // n_batches != epoch:
            epoch = step // n_batches
            batches = epoch_batches(lengths, B, seed, epoch)
        rows = batches[step % n_batches]
        x, xlen = pad_batch([clips[i][0].float() / 32768 for i in rows])
        gen.manual_seed(seed * 1_000_003 + step)  # augmentation depends on the step only: resumable
        feat, flen = features(audio.add_echo(x, xlen, gen).to(device), xlen.to(device))
        feat = spec_augment(feat, flen, gen)
        feat, flen = utils.shard((feat, flen))              # this rank's share of the batch
        rows = utils.shard(torch.as_tensor(rows)).tolist()
        with utils.autocast(device):
            loss = model.loss(feat, flen, [targets[i] for i in rows])
        loss.backward()
        utils.all_reduce_grads(params)
        torch.nn.utils.clip_grad_norm_(params, cfg["asr_grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        audio_seconds += float(xlen.sum()) / audio.SAMPLE_RATE
        history["train"].append([step, round(utils.mean_over_ranks(loss.item()), 4)])
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}", audio_x=f"{audio_seconds / (time.time() - t0):.0f}")
        if step % cfg["asr_ckpt_interval"] == 0 or step == max_steps:
            save()
    pbar.close()
    utils.report_replicas(model, "asr")
    train_seconds = time.time() - t0
    if step < max_steps:
        save()
        return {}

    # the spelling prior for beam search: a character n-gram LM of the corpus's text (the text
    # stage's data, not the transcripts of the speech), saved with the recognizer
    lm = CharLM(spokenworld.text_turns(cfg["data_dir"]) if realdata.is_default(cfg) else realdata.lm_texts(cfg, speech),
                cfg["asr_lm_order"])
    model.attach_lm(lm, cfg["asr_lm_weight"], cfg["asr_char_bonus"])
    save(lm)
    model.eval()
    last = [l for _, l in history["train"][-50:]]
    metrics = {"asr_train_loss": round(sum(last) / len(last), 4), "asr_params_m": round(n_params / 1e6, 3)}
    if audio_seconds:
        metrics["asr_train_audio_x_realtime"] = round(audio_seconds / train_seconds, 1)
    return metrics    # the stage runner then calls eval/metrics.py's evaluate_asr_checkpoint on the saved checkpoint


# -----------------------------------------------------------------------------
# pictures

def plot_posteriors(model, wav, ref, path):
    """Log-mel spectrogram on top; under it, per encoder frame, the probability of blank and of
    each character, with the greedy labels written over their frames."""
    mel, lp = model.posteriors(wav)
    probs = lp.exp().cpu().numpy().T  # [VOCAB_SIZE, frames]
    seconds = len(wav) / audio.SAMPLE_RATE
    hyp = decode_ids(greedy_decode(lp[None])[0])
    fig, (a0, a1) = utils.figure(2, 1, figsize=(12, 7), sharex=True, gridspec_kw=dict(height_ratios=[1, 1.6]))
    a0.imshow(mel.cpu().numpy(), origin="lower", aspect="auto", cmap="magma", extent=[0, seconds, 0, N_MELS])
    a0.set(ylabel="mel band", title=f"ref: {ref!r}\nhyp: {hyp!r}")
    frame_s = SUBSAMPLE * HOP / audio.SAMPLE_RATE
    a1.imshow(probs, origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=1,
              extent=[0, probs.shape[1] * frame_s, -0.5, VOCAB_SIZE - 0.5], interpolation="nearest")
    labels = ["blank", "space"] + list(CHARS[1:])
    a1.set_yticks(range(VOCAB_SIZE), labels, fontsize=6)
    for t, k in enumerate(probs.argmax(0)):
        if k != BLANK:
            a1.text((t + 0.5) * frame_s, k + 1.2, labels[k] if k != 1 else "_", ha="center", fontsize=7, color="tab:red")
    a1.set(xlabel="seconds", ylabel="CTC posterior per 30 ms frame")
    utils.save_figure(fig, path)
