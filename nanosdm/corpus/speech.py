"""
Stage `speech`: both channels of every spoken dialogue as codec codes, and the assistant's
inner-monologue text stream, frame by frame (12.5 Hz), ready for the dual-stream model.

Per 80 ms frame t a dialogue becomes 1 + 2K tokens (Moshi's layout, before the delays):

    text[t]          the inner monologue: SentencePiece tokens of the words, PAD / EPAD between
    assistant[t, k]  codebook k of the codec's code for the assistant's channel (k = 0 semantic)
    user[t, k]       the same for the user's channel (input only: the model never predicts it)

The text stream (Moshi): a word's tokens one per frame from the frame where the word starts, PAD
where nothing is said, EPAD on the PAD just before a new word's first token. A word that would
start before the previous one's tokens are out waits for them (the tokens keep their order).

Two additions to Moshi's monologue, both because a small model that only wrote its own words never
learnt to listen:
  - `user_text`: the user's words are written too, once they are heard: a word's tokens start
    `user_lag` frames after the frame where it ends (the model can only write what it has heard):
    the model transcribes what it hears, so the ear gets a dense training signal, and the question
    reaches the text LM in its own words;
  - `markers`: every turn is opened by its role marker and closed by EOS, as in the text LM's
    corpus (USER what colour is the kotan? EOS ASSISTANT the kotan is red. EOS). With the PADs
    removed, the text stream *is* a text-LM document, so the LM's knowledge is reached through the
    format it was trained on.
With both off, the stream is exactly Moshi's.

Files, under out/<preset>/speech/ (codes depend on the trained codec, so they live beside it):
    <split>_text.bin       uint16 [frames]            every dialogue of the split, one after another
    <split>_assistant.bin  uint16 [frames, K]         (nanoGPT style: np.memmap, random windows)
    <split>_user.bin       uint16 [frames, K]
    <split>.jsonl          per dialogue: id, offset, frames, and its turns (for the evaluations)

Splits: the corpus's spoken splits (train, val, unseen_voice, text_only), `align` (single
utterances for modality adaptation: ASR-like user turns and TTS-like assistant turns, synthesized
by corpus/practice.py), and under a `speech_data` setting the user's corpora (write_speech below: `real`, `align_real` and
their held-out parts, which sft and align then train on).
"""
import json
import os
import random

import numpy as np
import torch
from tqdm import tqdm

from nanosdm.corpus import audio, practice, realdata, spokenworld
from nanosdm.codec import FRAME, FRAME_S
from nanosdm.tokenizer import ASSISTANT, EOS, EPAD, PAD, TEXT, USER, Tokenizer

SPLITS = spokenworld.SPEECH_SPLITS + ("align",)
USER_LAG = 2            # frames from a heard word's end to its first token (text_stream says why)


# -----------------------------------------------------------------------------
# the inner-monologue text stream

def word_tokens(tok, turn, markers=True):
    """[(start_s, end_s, [token ids]), ...] for a turn's words. The turn's text (with its
    punctuation) is split on whitespace, one piece per timed word, so "kotan?" gives the same
    tokens as in the text corpus; real data without punctuation simply has none."""
    words = turn["words"]
    pieces = turn.get("text", "").split()
    if len(pieces) < len(words):  # an interrupted turn keeps a prefix of its words
        pieces = [w[0] for w in words]
    out = [(s, e, tok.encode(p)) for (_, s, e), p in zip(words, pieces)]
    if markers and out:
        role = USER if turn["speaker"] == "user" else ASSISTANT
        out[0] = (out[0][0], out[0][1], [role] + out[0][2])
        out[-1] = (out[-1][0], out[-1][1], out[-1][2] + [EOS])
    return out


def text_stream(turns, n_frames, tok, user_text=True, markers=True, user_lag=USER_LAG):
    """The text stream of one dialogue: uint16 [n_frames] (see the top of the file).

    Each token has an earliest frame. The assistant writes a word as it starts saying it: one token
    a frame from the word's start. A heard (user) word is written once it is heard whole: its tokens
    one a frame from `user_lag` frames after the frame of its end (1: the next frame). A name is one
    token, and written once half of it was heard (as this stream did before) the model had to guess
    it from its first syllables: names heard in new voices after align, 31% written at half the
    word, 58% with a lag of 1 frame, 70% with 2 (the causal units see no future: the extra 80 ms
    gives the name's last sounds their right context; docs/results.md). The price: the reply's
    marker waits a frame for the user's EOS in 9% of turns. A turn cut short by an interruption
    closes with EOS where the voice stops, not after its last word.

    One stream, two speakers: a user turn heard while the assistant speaks (a backchannel, the start
    of an interruption) is written afterwards, whole, in the first run of frames the assistant's words
    leave free. Written in time order with the rest, its tokens pushed the assistant's next words
    frames behind their audio (41% of the words starting near a backchannel came 2+ frames late), and
    the audio learnt to start words the text had not written yet. Whole, because a turn's tokens go
    to the latest open turn (read_text_stream): an assistant word inside it would be read as the user's."""
    events, nested = [], []  # (earliest frame of each token, time, tokens); per nested user turn, its events
    for tr in turns:
        heard = tr["speaker"] == "user"
        if heard and not user_text:
            continue
        mine = events
        if heard and any(a["speaker"] == "assistant" and _span(a)[0] < _span(tr)[0] < _span(a)[1] for a in turns):
            nested.append([])
            mine = nested[-1]
        words = word_tokens(tok, tr, markers)
        if markers and words and tr.get("interrupted"):
            s, e, ids = words[-1]
            words[-1] = (s, e, ids[:-1])
            mine.append(([int(tr["end"] / FRAME_S)], tr["end"], [EOS]))
        for w, (s, e, ids) in enumerate(words):
            n = len(ids)
            # a spoken turn's marker goes in the frame before its first word, so the word's first
            # token and its audio start together (else every turn's first word is a frame late)
            lead = 1 if markers and w == 0 and not heard else 0
            frames = ([int(e / FRAME_S) + user_lag + j for j in range(n)] if heard
                      else [max(0, int(s / FRAME_S) - lead + j) for j in range(n)])
            mine.append((frames, s, ids))
    stream = np.full(n_frames, PAD, dtype=np.uint16)
    _write(stream, sorted(events, key=lambda ev: (ev[0][0], ev[1])))
    for block in nested:
        start = block[0][0][0]
        while True:   # the first start from which the whole turn fits between the assistant's tokens
            frames = _frames(block, start)
            busy = [f for f in range(frames[0][0], min(frames[-1][-1] + 1, n_frames)) if stream[f] != PAD]
            if not busy:
                break
            start = busy[-1] + 1
        _write(stream, block, start)
    return stream


# Word durations in seconds, letters x a + b, fitted on 300 training dialogues' eSpeak timings, and
# the pause after each speaker's turn: from a question's last word to the reply's first (the corpus's
# 1st to 99th percentiles), from a reply's end to the next question (1st to 75th)
TIMED_WORD_S = {"user": (0.063, 0.010), "assistant": (0.082, -0.054)}
TIMED_GAP_S = {"user": (0.35, 0.8), "assistant": (0.5, 2.0)}


def timed_text(docs, tok, rng, user_lag=USER_LAG):
    """The text corpus's dialogues laid out in time, for sft's timed text batches: each dialogue's
    turns [[speaker, text], ...] (prose documents are skipped) get the word timings eSpeak would give them (TIMED_WORD_S, +-20%) and
    are written by text_stream, as a spoken dialogue's monologue is. No audio is rendered: the text-only
    facts stay unspoken. -> (uint16 [frames], the dialogues one after another; bool [frames], True
    over each user turn, from the PAD before its marker to its EOS: with no voice to hear, what the
    user says, and when, is context for the reply, never a target: learnt from text, the ear would
    write names from the LM's expectations rather than from the sound).

    Why: with the question's words written for it, the dual-stream model answered the text-only
    facts 25% of the time in its monologue's layout (PADs, the user's words one a frame behind the
    voice), 100% in the text LM's layout. The layout, not the facts, was missing."""
    out = []
    for doc in docs:
        if any(speaker not in TIMED_WORD_S for speaker, _ in doc):
            continue          # prose (a "text" turn), not a dialogue: nothing to lay out in turns
        t, turns = rng.uniform(0.1, 1.0), []
        for speaker, text in doc:
            if not text.split():
                continue      # an empty turn says nothing and takes no time
            a, b = TIMED_WORD_S[speaker]
            words, w_t = [], t
            for w in text.split():
                d = max(0.08, (a * len(w) + b) * rng.uniform(0.8, 1.2))
                words.append([w, w_t, w_t + d])
                w_t += d + rng.uniform(0.0, 0.04)
            turns.append(dict(speaker=speaker, text=text, start=t, end=words[-1][2], words=words))
            t = words[-1][2] + rng.uniform(*TIMED_GAP_S[speaker])
        stream = text_stream(turns, int(np.ceil(t / FRAME_S)), tok, user_lag=user_lag)
        heard = np.zeros(len(stream), dtype=bool)
        for tr in read_text_stream(stream):
            if tr["role"] == USER:
                heard[max(0, tr["start"] - 1):tr["end"] + 1] = True
        out.append((stream, heard))
    if not out:
        raise ValueError("timed text: the text corpus holds no user/assistant dialogue to lay out")
    return np.concatenate([s for s, _ in out]), np.concatenate([h for _, h in out])


def _span(turn):
    """A turn's (start, end) in seconds: its own, or its words'."""
    words = turn["words"] or [[None, 0.0, 0.0]]
    return turn.get("start", words[0][1]), turn.get("end", words[-1][2])


def _frames(words, start=0):
    """The frames a sequence of words' tokens take, one token a frame, none before its earliest
    frame, none before `start`, the words in order."""
    f, out = start, []
    for frames, _, ids in words:
        out.append([])
        for earliest in frames:
            f = max(f, earliest)
            out[-1].append(f)
            f += 1
    return out


def _write(stream, words, start=0):
    """Write words (sorted) into the stream at the frames _frames gives; EPAD on the PAD before each."""
    for (_, _, ids), frames in zip(words, _frames(words, start)):
        if 0 < frames[0] < len(stream) and stream[frames[0] - 1] == PAD:
            stream[frames[0] - 1] = EPAD  # the PAD just before a word (never a token of the previous one)
        for f, i in zip(frames, ids):
            if f < len(stream):
                stream[f] = i


def read_text_stream(ids):
    """The inverse of text_stream, for a stream a model wrote: its turns, in order, as dicts
    role (USER / ASSISTANT), start (frame of the marker), end (frame of the EOS, or None if still
    open) and tokens [(frame, id)]. Turns nest: a backchannel heard while the assistant speaks is
    a user turn inside the assistant's, so an EOS closes the latest open turn, and a token goes to
    it. Tokens outside any turn are dropped."""
    turns, open_ = [], []
    for f, i in enumerate(ids):
        i = int(i)
        if i in (USER, ASSISTANT):
            for tr in [t for t in open_ if t["role"] == i]:   # a new turn of the same role closes the old
                tr["end"] = f
                open_.remove(tr)
            turns.append(dict(role=i, start=f, end=None, tokens=[]))
            open_.append(turns[-1])
        elif i == EOS:
            if open_:
                open_.pop()["end"] = f
        elif i > TEXT and open_:                  # a word's piece (named ids end at TEXT)
            open_[-1]["tokens"].append((f, i))
    return turns


# -----------------------------------------------------------------------------
# encoding dialogues to codes

@torch.no_grad()
def encode_channels(codec, wav, batch_seconds=60):
    """Stereo float wav [2, T] -> codes uint16 [2, frames, K], frames = ceil(T / 1280). Long
    recordings are encoded in pieces of batch_seconds; the codec is causal with a short state, so
    the encoder simply carries its state across pieces."""
    dev = next(codec.parameters()).device
    frame = codec_frame(codec)
    n = -(-wav.shape[1] // frame)
    wav = torch.nn.functional.pad(wav, (0, n * frame - wav.shape[1]))
    state, out = codec.encoder_state(2), []
    step = int(batch_seconds / FRAME_S) * frame
    for s in range(0, wav.shape[1], step):
        z, state = codec.encode_latent(wav[:, s:s + step].to(dev), state)
        out.append(codec.quantizer.encode(z))
    return torch.cat(out, -1).transpose(1, 2).cpu().numpy().astype(np.uint16)


def codec_frame(codec):
    return int(round(audio.SAMPLE_RATE * FRAME_S))


UNITS_PER_FRAME = 4     # 50 Hz units in an 80 ms frame


@torch.no_grad()
def ear_codes(units, wav, n_frames, n_q, stretch=1.0):
    """The user's channel as the causal units hear it: uint16 [n_frames, n_q], the 4 unit ids of
    each 80 ms frame in its columns (n_q = 8: each twice). A voice-invariant phonetic ear: a name
    in a voice never heard is far easier to recognise from units than from the codec's codes.
    stretch != 1: heard as a longer or shorter vocal tract (Units.encode), a voice no speaker has."""
    if n_q % UNITS_PER_FRAME:
        raise ValueError(f"dual_ear=units puts {UNITS_PER_FRAME} units in a frame's {n_q} user columns: "
                         f"codec_n_q must be a multiple of {UNITS_PER_FRAME}")
    wav = torch.nn.functional.pad(wav.float(), (0, max(0, n_frames * FRAME - wav.shape[-1])))[:n_frames * FRAME]
    ids = units.encode(wav, stretch=stretch).reshape(n_frames, UNITS_PER_FRAME)
    return ids.repeat(1, n_q // UNITS_PER_FRAME).cpu().numpy().astype(np.uint16)


def ear_stretch(rng, split, warp):
    """The mel stretch a dialogue's user is heard at: 1 +- warp in the training splits (train,
    align), 1 in the splits that measure (val, unseen_voice, text_only hear the voices as they are)."""
    return 1 + rng.uniform(-1, 1) * warp if split in ("train", "align") else 1.0


class StreamWriter:
    """Appends dialogues to a split's three memmap files and its index; files take their final
    names only when the split is complete (a killed stage leaves no half split behind)."""

    def __init__(self, out_dir, split):
        os.makedirs(out_dir, exist_ok=True)
        self.paths = {k: os.path.join(out_dir, f"{split}_{k}.bin") for k in ("text", "assistant", "user")}
        self.index_path = os.path.join(out_dir, f"{split}.jsonl")
        self.files = {k: open(p + ".tmp", "wb") for k, p in self.paths.items()}
        self.index = open(self.index_path + ".tmp", "w")
        self.offset = 0

    def add(self, record, text, codes):
        n = len(text)
        assert codes.shape[1] == n, f"{codes.shape} codes for {n} text frames"
        self.files["text"].write(text.tobytes())
        self.files["assistant"].write(np.ascontiguousarray(codes[spokenworld.ASSISTANT]).tobytes())
        self.files["user"].write(np.ascontiguousarray(codes[spokenworld.USER]).tobytes())
        self.index.write(json.dumps(dict(record, offset=self.offset, frames=n)) + "\n")
        self.offset += n

    def close(self):
        for k, f in self.files.items():
            f.close()
            os.replace(self.paths[k] + ".tmp", self.paths[k])
        self.index.close()
        os.replace(self.index_path + ".tmp", self.index_path)
        return self.offset


def encode_dialogue(codec, tok, wav, turns, cfg, ear=None, stretch=1.0):
    """A dialogue's streams: (text [frames], codes [2, frames, K]); the user's codes are the
    units' (ear_codes, heard at `stretch`) when an ear is given."""
    codes = encode_channels(codec, wav)
    if ear is not None:
        codes[spokenworld.USER] = ear_codes(ear, wav[spokenworld.USER], codes.shape[1], codes.shape[2], stretch)
    text = text_stream(turns, codes.shape[1], tok, cfg["dual_user_text"], cfg["dual_markers"], cfg["dual_user_lag"])
    return text, codes


class Streams:
    """One split's streams through memory maps: text [N], assistant [N, K], user [N, K]."""

    def __init__(self, speech_dir, split):
        index = os.path.join(speech_dir, f"{split}.jsonl")
        if not os.path.exists(index):
            raise FileNotFoundError(f"{index} missing: run `python train.py --stage=speech` first")
        self.split, self.dialogues = split, spokenworld.read_jsonl(index)
        self.text = np.memmap(os.path.join(speech_dir, f"{split}_text.bin"), dtype=np.uint16, mode="r")
        n = len(self.text)
        self.assistant = np.memmap(os.path.join(speech_dir, f"{split}_assistant.bin"), dtype=np.uint16, mode="r").reshape(n, -1)
        self.user = np.memmap(os.path.join(speech_dir, f"{split}_user.bin"), dtype=np.uint16, mode="r").reshape(n, -1)

    def __len__(self):
        return len(self.text)

    def window(self, start, length):
        """Undelayed tokens [length, 1 + 2K] (text, assistant codebooks, user codebooks), int64."""
        sl = slice(start, start + length)
        return np.concatenate([self.text[sl, None], self.assistant[sl], self.user[sl]], 1).astype(np.int64)

    def dialogue(self, i):
        d = self.dialogues[i]
        return self.window(d["offset"], d["frames"]), d


# -----------------------------------------------------------------------------
# the stage

def load_ear(cfg, device=None):
    """The units the user is heard through (dual_ear=units), or None (the codec's codes)."""
    if cfg["dual_ear"] == "codec":
        return None
    if cfg["dual_ear"] != "units":
        raise ValueError(f"dual_ear must be 'codec' or 'units', not {cfg['dual_ear']!r}")
    from nanosdm.units import Units
    units = Units.load(os.path.join(cfg["out_dir"], "units.pt"), device or cfg["device"])
    if not (units.encoder.config.get("causal") and units.encoder.config.get("window")):
        raise ValueError("dual_ear=units needs units that stream: python train.py --stage=units "
                         "--units_causal=True --units_window=100 (then the stages after it)")
    return units


def build(cfg):
    from nanosdm.codec import Codec
    out = os.path.join(cfg["out_dir"], "speech")
    codec = Codec.load(os.path.join(cfg["out_dir"], "codec.pt"), cfg["device"])
    tok = Tokenizer.load(os.path.join(cfg["out_dir"], "tokenizer.model"))
    ear = load_ear(cfg)
    # the training splits' users heard through a random vocal tract each (dual_ear_warp): voices no
    # speaker has, so that the model learns names from ids as varied as a new voice's
    warp = random.Random(cfg["seed"] + 13)
    stretch = lambda split: ear_stretch(warp, split, cfg["dual_ear_warp"])
    metrics = {}
    for split in spokenworld.SPEECH_SPLITS:
        sp = spokenworld.SpeechSplit(cfg["data_dir"], split)
        w = StreamWriter(out, split)
        for i in tqdm(range(len(sp)), desc=f"speech {split}", unit="dlg"):
            wav, d = sp.dialogue(i)
            text, codes = encode_dialogue(codec, tok, wav, d["turns"], cfg, ear, stretch(split))
            w.add(dict(id=d["id"], turns=d["turns"]), text, codes)
        if split == "train":
            for i, (wav, turns) in enumerate(practice.extra_dialogues(cfg)):
                text, codes = encode_dialogue(codec, tok, wav, turns, cfg, ear, stretch(split))
                w.add(dict(id=f"extra-{i:05d}", turns=turns), text, codes)
        metrics[f"speech_frames_{split}"] = w.close()
    w = StreamWriter(out, "align")
    for i, (wav, turns) in enumerate(practice.align_dialogues(cfg, cfg["seed"] + 7)):
        text, codes = encode_dialogue(codec, tok, wav, turns, cfg, ear, stretch("align"))
        w.add(dict(id=f"align-{i:05d}", turns=turns), text, codes)
    metrics["speech_frames_align"] = w.close()
    if not realdata.is_default(cfg):   # the user's corpora: splits real, align_real and their held-out parts
        metrics.update(write_speech(cfg, out, codec, tok, ear))
    s = Streams(out, "train")
    metrics["speech_text_pad_share"] = round(float(np.isin(s.text, [PAD, EPAD]).mean()), 4)
    print(f"speech: {', '.join(f'{k}={v}' for k, v in metrics.items())}")
    return metrics


# -----------------------------------------------------------------------------
# real corpora (nanosdm/realdata.py's --speech_data) as codes, beside SpokenWorld's: for align and sft

REAL_EVAL_TURNS = 160      # held-out utterances of split align_real_heldout (eval/dialogue.py's user_wer reads 160)
PER_DIALOGUE = 8           # single utterances per pseudo-dialogue of split align_real (as practice.align_dialogues)


def _weight(cfg, kinds, kind="spokenworld"):
    """The share of `kind` among the corpora of the given kinds (renormalised)."""
    sources = [s for s in realdata.parse(cfg["speech_data"]) if s["kind"] in kinds]
    total = sum(s["weight"] for s in sources)
    return sum(s["weight"] for s in sources if s["kind"] == kind) / total if total else 0.0


def write_speech(cfg, out, codec, tok, ear=None):
    """Stage `speech` for the user's corpora, beside SpokenWorld's splits:
      real, real_heldout              the two-channel dialogues (moshi), for sft
      align_real, align_real_heldout  single utterances with word timings in pseudo-dialogues, for
                                      align: a Moshi turn brings its timings; a LibriSpeech utterance
                                      gets them from forced alignment with out/<preset>/asr.pt
    Returns {speech_frames_<split>: frames}."""
    metrics = {}
    moshi = [s for s in realdata.parse(cfg["speech_data"]) if s["kind"] == "moshi"]
    if moshi:   # whole dialogues, held out by dialogue
        dialogues = [dict(d, speaker=d["id"]) for s in moshi for d in realdata.moshi_dialogues(s["path"])]
        train, held = realdata.split_heldout(dialogues)
        if cfg.get("speech_eval_data"):
            train, held = dialogues, [d for s in realdata.parse(cfg["speech_eval_data"]) if s["kind"] == "moshi"
                                      for d in realdata.moshi_dialogues(s["path"])]
        reader = realdata.Reader(len(dialogues) + len(held))
        for split, part in (("real", train), ("real_heldout", held)):
            w = StreamWriter(out, split)
            for d in part:
                wavs = [reader.read(dict(path=d["path"], channel=c, start=None, end=None)) for c in (spokenworld.ASSISTANT, spokenworld.USER)]
                if any(x is None for x in wavs):
                    continue
                text, codes = encode_dialogue(codec, tok, torch.stack(wavs), d["turns"], cfg, ear)
                w.add(dict(id=d["id"], turns=d["turns"]), text, codes)
            metrics[f"speech_frames_{split}"] = w.close()
    real_kinds = tuple(k for k in realdata.KINDS if k != "spokenworld")
    if not any(s["kind"] in real_kinds for s in realdata.parse(cfg["speech_data"])):
        return metrics
    speech = realdata.Speech(cfg, real_kinds)
    timings = _aligner(cfg)
    n = round((cfg["align_user_turns"] + cfg["align_assistant_turns"]) * (1 - _weight(cfg, realdata.KINDS)))
    user_share = cfg["align_user_turns"] / max(1, cfg["align_user_turns"] + cfg["align_assistant_turns"])
    rng = random.Random(cfg["seed"] + 11)
    for split, items in (("align_real", speech.mix.sequence(max(1, n), cfg["seed"])),
                         ("align_real_heldout", speech.heldout[:REAL_EVAL_TURNS])):
        w, group, untimed = StreamWriter(out, split), [], 0

        def flush():
            stereo, turns = practice.place(group, rng)
            for tr in turns:   # what eval/dialogue.py's user_wer transcribes
                tr["kind"] = "question" if tr["speaker"] == "user" else "answer"
            text, codes = encode_dialogue(codec, tok, stereo, turns, cfg, ear)
            w.add(dict(id=f"{split}-{w.offset}", turns=turns), text, codes)
            group.clear()

        for item in items:
            wav = speech.reader.read(item)
            if wav is None:
                continue
            words = item["words"] or timings(wav, item["text"])
            if not words:
                untimed += 1
                continue
            ch = spokenworld.USER if split.endswith("heldout") or rng.random() < user_share else spokenworld.ASSISTANT
            group.append((ch, " ".join(word for word, _, _ in words), wav.numpy(), words))
            if len(group) == PER_DIALOGUE:
                flush()
        if group:
            flush()
        metrics[f"speech_frames_{split}"] = w.close()
        if untimed:
            print(f"speech: {untimed} utterances of {split} skipped: no word timings ({timings.why})")
    return metrics


def _aligner(cfg):
    """wav, text -> [[word, start, end]] by CTC forced alignment with the trained recognizer, or
    a function that returns None (and says why) when there is none."""
    from nanosdm import asr
    path = os.path.join(cfg["out_dir"], "asr.pt")
    if not os.path.exists(path):
        def none(wav, text):
            return None
        none.why = f"a LibriSpeech-style corpus has none, and forced alignment needs {path}: run --stage=asr first"
        return none
    model = asr.ASR.load(path, cfg["device"])

    def align(wav, text):
        try:
            return [list(w) for w in asr.align_words(model, wav, text)]
        except (ValueError, audio.AudioError) as e:
            align.why = f"forced alignment failed, e.g. {e}"
            return None
    align.why = "forced alignment failed"
    return align
