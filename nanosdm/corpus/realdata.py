"""
Bring your own speech: where the stages that read speech get it from (the `speech_data` setting).

    speech_data = "spokenworld"                                  the embedded corpus (the default)
    speech_data = "librispeech:/data/LibriSpeech/train-clean-100"  audio + transcripts, one speaker a file
    speech_data = "moshi:/data/calls"                            stereo dialogues + word-timing JSON
    speech_data = "spokenworld:0.3,librispeech:/data/ls:0.7"     a mix, drawn in these proportions

Grammar: comma-separated corpora, each `kind[:path][:weight]` (spokenworld takes no path); give
every corpus a weight or none (then they share equally); weights are normalised to sum to 1.

Who reads what:
  units, codec, asr     single utterances of every corpus of the mix (a Moshi dialogue gives each
                        of its turns, on its own channel)
  speech -> align       single utterances of the user's corpora with word timings, in split
                        `align_real` beside SpokenWorld's synthesized `align` split
  speech -> sft         the two-channel corpora only (spokenworld, moshi: split `real`); a
                        single-speaker corpus has no second speaker to listen to
With the default, every stage runs its old SpokenWorld code and nothing here is called
(is_default).

Held out for the `_real` figures: a share of the speakers (LibriSpeech: the number before the first
dash of an utterance id) or of the dialogues (Moshi: who speaks is not known across files), or all
of `speech_eval_data` when it is set (e.g. LibriSpeech's test-clean). SpokenWorld keeps its own
evaluation splits.

Corpora are listed up front (paths, transcripts, timings, wav headers) and audio is read with
audio.load_wav when a batch needs it, so a corpus larger than memory works. A file that fails to
load is reported by path, skipped and counted; a stage fails only when more than MAX_BAD_SHARE of
a setting's files (and more than MAX_BAD_FILES) fail.
"""
import json
import math
import os
import random
import zlib

import numpy as np
import scipy.io.wavfile
import torch

from nanosdm import ctc, utils
from nanosdm.corpus import audio, spokenworld

SAMPLE_RATE = audio.SAMPLE_RATE
KINDS = ("spokenworld", "librispeech", "moshi")
TWO_CHANNEL = ("spokenworld", "moshi")  # corpora of dialogues: they also feed speech and sft
HELDOUT_SHARE = 0.1        # of the speakers (or dialogues) of each corpus, kept for the _real figures
MAX_BAD_SHARE = 0.05       # a stage fails when more than this share of the files fail to load ...
MAX_BAD_FILES = 3          # ... and more than this many (a few bad files in a small corpus are no reason to stop)
TURN_PAD_S = 0.1           # audio kept around a dialogue turn's first and last word
MIN_TURN_S = 0.3           # shorter turns of a dialogue ("mm") are not worth training on alone


# -----------------------------------------------------------------------------
# the setting

def _number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def parse(setting):
    """'spokenworld:0.5,librispeech:/data/ls:0.5' -> [dict(kind, path, weight)], weights summing to 1."""
    sources = []
    for entry in setting.split(","):
        kind, _, rest = entry.strip().partition(":")
        if kind not in KINDS:
            raise ValueError(f"speech_data: unknown corpus kind {kind!r} in {setting!r} (known: {', '.join(KINDS)})")
        weight = None
        head, sep, tail = rest.rpartition(":")
        if sep and _number(tail):
            rest, weight = head, float(tail)
        elif kind == "spokenworld" and rest and _number(rest):
            rest, weight = "", float(rest)
        if kind == "spokenworld" and rest:
            raise ValueError(f"speech_data: spokenworld takes no path, got {entry!r}")
        if kind != "spokenworld" and not rest:
            raise ValueError(f"speech_data: {kind} needs a path: {kind}:PATH[:WEIGHT], got {entry!r}")
        sources.append(dict(kind=kind, path=rest, weight=weight))
    given = [s["weight"] is not None for s in sources]
    if any(given) and not all(given):
        raise ValueError(f"speech_data: give every corpus of {setting!r} a weight, or none")
    if any(s["weight"] is not None and s["weight"] <= 0 for s in sources):
        raise ValueError(f"speech_data: weights must be positive in {setting!r}")
    total = sum(s["weight"] for s in sources) if all(given) else len(sources)
    for s in sources:
        s["weight"] = (s["weight"] if all(given) else 1.0) / total
    return sources


def is_default(cfg):
    """True when the stages read SpokenWorld only, as they always did."""
    return (cfg.get("speech_data", "spokenworld").strip() == "spokenworld"
            and not cfg.get("speech_eval_data"))


def normalize(text):
    """A transcript in the recognizer's alphabet (case, punctuation and numerals handled)."""
    return ctc.normalize_transcript(text)


# -----------------------------------------------------------------------------
# listing: every single utterance of a corpus (wav headers read, no audio)

def _samples(item):
    """How many 16 kHz samples a wav holds, from its header; a file that cannot be read gets
    n = 0 and its reason under "error" (Speech reports and skips it)."""
    try:
        sr, x = scipy.io.wavfile.read(item["path"], mmap=True)
        return dict(item, n=int(len(x) * SAMPLE_RATE / sr))
    except Exception as e:   # mmap refuses some valid formats (24-bit): let load_wav decide
        try:
            return dict(item, n=len(audio.load_wav(item["path"])))
        except Exception as e2:
            return dict(item, n=0, error=str(e2) or str(e))


def librispeech_items(root, missing_ok=False):
    """LibriSpeech-style folders: <spk>/<chapter>/<id>.flac|wav with <spk>-<chapter>.trans.txt
    lines "<id> TRANSCRIPT". Returns [{"id", "path", "text", "speaker"}] for the wav files (flac:
    convert first). missing_ok: list a missing file anyway (the reader then reports and skips it)."""
    items = []
    for dirpath, _, files in sorted(os.walk(root)):
        for fn in sorted(f for f in files if f.endswith(".trans.txt")):
            with open(os.path.join(dirpath, fn)) as f:
                for line in f:
                    if not line.strip():
                        continue
                    uid, text = line.strip().split(" ", 1)
                    path = os.path.join(dirpath, uid + ".wav")
                    if not os.path.exists(path) and not missing_ok:
                        hint = " (convert .flac to .wav first)" if os.path.exists(path[:-4] + ".flac") else ""
                        raise FileNotFoundError(f"{path}: listed in {fn} but missing{hint}")
                    items.append(dict(id=uid, path=path, text=text.lower(), speaker=uid.split("-")[0]))
    if not items:
        raise FileNotFoundError(f"{root}: no *.trans.txt files found")
    return items


def moshi_dialogues(root, main_speaker="SPEAKER_MAIN"):
    """Moshi-finetune-style data: <name>.wav (stereo, main speaker on the left channel) beside
    <name>.json holding {"alignments": [[word, [start, end], speaker], ...]}. Returns
    [{"id", "path", "turns"}] in SpokenWorld's turn format (main speaker = assistant)."""
    out = []
    for fn in sorted(f for f in os.listdir(root) if f.endswith(".json")):
        wav_path = os.path.join(root, fn[:-5] + ".wav")
        with open(os.path.join(root, fn)) as f:
            obj = json.load(f)
        words = obj["alignments"] if isinstance(obj, dict) else obj
        turns = []
        for word, (s, e), spk in words:
            who = "assistant" if spk == main_speaker else "user"
            if not turns or turns[-1]["speaker"] != who:
                turns.append(dict(speaker=who, kind="speech", start=s, end=e, words=[], phones=[]))
            turns[-1]["words"].append([word.lower(), s, e])
            turns[-1]["end"] = e
        for tr in turns:
            tr["text"] = " ".join(w[0] for w in tr["words"])
        if not os.path.exists(wav_path):
            raise FileNotFoundError(f"{wav_path}: missing beside {fn}")
        out.append(dict(id=fn[:-5], path=wav_path, turns=turns))
    return out


def list_items(source, data_dir=None, split="train"):
    """[dict(id, path, channel, start, end, text, words, speaker, n)]: channel None mixes a file
    down; start/end in seconds (None: the whole file); words [[word, start, end]] relative to
    start, or None where the corpus has no timings; n about how many samples at 16 kHz."""
    kind, root = source["kind"], source["path"]
    items = []
    if kind == "librispeech":
        for it in librispeech_items(root, missing_ok=True):
            items.append(_samples(dict(it, channel=None, start=None, end=None, words=None)))
    elif kind == "moshi":
        for d in moshi_dialogues(root):
            for i, tr in enumerate(d["turns"]):
                if tr["end"] - tr["start"] < MIN_TURN_S:
                    continue
                start, end = max(0.0, tr["start"] - TURN_PAD_S), tr["end"] + TURN_PAD_S
                items.append(dict(id=f"{d['id']}/{i}", path=d["path"], text=tr["text"], speaker=d["id"],
                                  channel=spokenworld.ASSISTANT if tr["speaker"] == "assistant" else spokenworld.USER,
                                  start=start, end=end, words=[[w, s - start, e - start] for w, s, e in tr["words"]],
                                  n=int((end - start) * SAMPLE_RATE)))
    else:   # SpokenWorld's turns, read from its memory map
        sp = spokenworld.SpeechSplit(data_dir, split)
        path = os.path.join(data_dir, f"speech_{split}.bin")
        for d in sp.dialogues:
            for i, tr in enumerate(d["turns"]):
                if not tr["words"]:
                    continue
                s, e = (d["offset"] + int(round(t * SAMPLE_RATE)) for t in (tr["start"], tr["end"]))
                items.append(dict(id=f"{d['id']}/{i}", path=path, channel=spokenworld.ASSISTANT if tr["speaker"] == "assistant"
                                  else spokenworld.USER, start=None, end=None, memmap=(s, min(e, d["offset"] + d["length"])),
                                  text=tr["text"], speaker=d.get("user_voice", {}).get("voice", d["id"]),
                                  words=[[w, a - tr["start"], b - tr["start"]] for w, a, b in tr["words"]], n=e - s))
    if not items:
        raise ValueError(f"speech_data: {kind}:{root} holds no usable utterances")
    return items


def split_heldout(items, share=HELDOUT_SHARE):
    """(train, held out): whole speakers held out, chosen by a hash of their name (stable when
    the corpus grows); with a single speaker, every 1/share-th utterance."""
    speakers = sorted({it["speaker"] for it in items}, key=lambda s: (zlib.crc32(str(s).encode()), str(s)))
    if len(speakers) >= 2:
        held = set(speakers[:min(len(speakers) - 1, max(1, round(share * len(speakers))))])
        return [it for it in items if it["speaker"] not in held], [it for it in items if it["speaker"] in held]
    every = max(2, round(1 / share))
    return ([it for i, it in enumerate(items) if i % every != every - 1],
            [it for i, it in enumerate(items) if i % every == every - 1])


# -----------------------------------------------------------------------------
# reading, with bad files skipped and counted

class Reader:
    def __init__(self, n_files):
        self.n_files, self.bad, self.maps = n_files, {}, {}

    def read(self, item):
        """The item's audio, float32 [T] at 16 kHz, or None when its file cannot be used."""
        if item["path"] in self.bad:
            return None
        try:
            if "memmap" in item:
                if item["path"] not in self.maps:
                    self.maps[item["path"]] = np.memmap(item["path"], dtype=np.int16, mode="r").reshape(-1, 2)
                s, e = item["memmap"]
                return torch.from_numpy(self.maps[item["path"]][s:e, item["channel"]].astype(np.float32) / 32768.0)
            return audio.load_wav(item["path"], channel=item["channel"], start=item["start"], end=item["end"])
        except (audio.AudioError, OSError, ValueError) as e:
            self.skip(item["path"], e)
            return None

    def skip(self, path, why):
        why = str(why)
        self.bad[path] = why
        print(f"speech_data: skipped {path}: {why if not why.startswith(path) else why[len(path) + 2:]}")
        limit = max(MAX_BAD_FILES, MAX_BAD_SHARE * self.n_files)
        if len(self.bad) > limit:
            raise RuntimeError(f"speech_data: {len(self.bad)} of {self.n_files} files failed to load (at most "
                               f"{limit:g} may): " + "; ".join(f"{p}: {w}" for p, w in list(self.bad.items())[:5]))


class Mix:
    """Corpora drawn in stated proportions. parts: [(weight, items)]."""

    def __init__(self, parts, reader):
        self.parts = [(w, list(items)) for w, items in parts if w > 0 and items]
        self.weights = torch.tensor([w for w, _ in self.parts], dtype=torch.float64)
        self.reader = reader

    def pick(self, gen):
        """(part index, item) at random, nothing read: a part by its weight, an item of it uniformly."""
        p = int(torch.multinomial(self.weights, 1, generator=gen))
        items = self.parts[p][1]
        return p, items[int(torch.randint(len(items), (), generator=gen))]

    def drop(self, p, item):
        """An item whose file failed to load leaves the mix."""
        self.parts[p][1].remove(item)
        if not self.parts[p][1]:
            raise RuntimeError(f"speech_data: every file of corpus {p} of the mix failed to load")

    def sample(self, gen):
        """(part index, item, wav) at random (pick), read; a bad file is dropped and another drawn."""
        while True:
            p, item = self.pick(gen)
            wav = self.reader.read(item)
            if wav is not None and len(wav) > 0:
                return p, item, wav
            self.drop(p, item)

    def sequence(self, n, seed):
        """n items, round(weight * n) from each part (each part's items in a shuffled order, again
        and again as needed), shuffled together: an 'epoch' of the mix in its exact proportions."""
        rng = random.Random(seed)
        counts = [math.floor(w * n) for w, _ in self.parts]
        for p in sorted(range(len(self.parts)), key=lambda p: counts[p] - self.parts[p][0] * n)[:n - sum(counts)]:
            counts[p] += 1     # largest remainders
        out = []
        for (_, items), c in zip(self.parts, counts):
            order = []
            while len(order) < c:
                order += rng.sample(range(len(items)), len(items))
            out += [items[i] for i in order[:c]]
        rng.shuffle(out)
        return out

    def texts(self):
        return [it["text"] for _, items in self.parts for it in items]


class Speech:
    """The single utterances of a setting: a Mix of the training items, the held-out items of the
    user's corpora (for the _real figures) and one Reader counting bad files.
    kinds: only these kinds of corpora, their weights renormalised."""

    def __init__(self, cfg, kinds=KINDS):
        sources = [s for s in parse(cfg.get("speech_data", "spokenworld")) if s["kind"] in kinds]
        if not sources:
            raise ValueError(f"speech_data={cfg['speech_data']!r} has no corpus of kind {' or '.join(kinds)}")
        total = sum(s["weight"] for s in sources)
        self.sources = sources = [dict(s, weight=s["weight"] / total) for s in sources]
        eval_setting = cfg.get("speech_eval_data") or ""
        parts, self.heldout = [], []
        for s in sources:
            items = list_items(s, cfg.get("data_dir"))
            train, held = (items, []) if s["kind"] == "spokenworld" or eval_setting else split_heldout(items)
            parts.append((s["weight"], train))
            self.heldout += held
            print(f"speech_data: {s['kind']}{':' + s['path'] if s['path'] else ''} weight {s['weight']:.2f}: "
                  f"{len(train)} utterances ({sum(it['n'] for it in train) / SAMPLE_RATE / 3600:.2f} h) for "
                  f"training, {len(held)} held out ({len({it['speaker'] for it in held})} speakers or dialogues)")
        if eval_setting:
            self.heldout = [it for s in parse(eval_setting) if s["kind"] in kinds and s["kind"] != "spokenworld"
                            for it in list_items(s)]
            print(f"speech_data: {len(self.heldout)} utterances of {eval_setting} held out for evaluation")
        n_files = len({it["path"] for _, items in parts for it in items} | {it["path"] for it in self.heldout})
        self.reader = Reader(n_files)
        for it in [it for _, items in parts for it in items] + self.heldout:   # headers that failed to read
            if "error" in it and it["path"] not in self.reader.bad:
                self.reader.skip(it["path"], it["error"])
        parts = [(w, [it for it in items if "error" not in it]) for w, items in parts]
        self.heldout = [it for it in self.heldout if "error" not in it]
        self.mix = Mix(parts, self.reader)

    def heldout_wavs(self, limit, min_samples=0):
        """Up to `limit` held-out (wav, item), bad files skipped; spread over the whole held-out list."""
        items = self.heldout[::max(1, len(self.heldout) // limit)] if limit else self.heldout
        out = []
        for it in items:
            wav = self.reader.read(it)
            if wav is not None and len(wav) >= max(1, min_samples):
                out.append((wav, it))
        return out[:limit] if limit else out


# -----------------------------------------------------------------------------
# what the stages draw

def utterance_stream(cfg, path, max_hours=0.0, multiple=1, seed=0):
    """Stage `units`: one pass over the mix in its proportions (up to max_hours; 0: as many
    utterances as the corpora hold), each cut to a multiple of `multiple` samples, written end to
    end as int16 to `path` and read back through a memory map. Returns (int16 tensor [N],
    [(offset, length)], [normalised text])."""
    speech = Speech(cfg)
    n = sum(len(items) for _, items in speech.mix.parts)
    spans, texts, offset = [], [], 0
    if utils.rank():   # data parallel: every rank draws the same stream, each into its own file
        path = f"{os.path.splitext(path)[0]}.rank{utils.rank()}.bin"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        for item in speech.mix.sequence(n, seed):
            text = normalize(item["text"])
            wav = speech.reader.read(item) if text else None
            if wav is None or len(wav) < multiple:
                continue
            pcm = (wav[:len(wav) // multiple * multiple] * 32768.0).round().clamp(-32768, 32767).to(torch.int16)
            f.write(pcm.numpy().tobytes())
            spans.append((offset, len(pcm)))
            texts.append(text)
            offset += len(pcm)
            if max_hours and offset >= max_hours * 3600 * SAMPLE_RATE:
                break
    os.replace(path + ".tmp", path)
    if not spans:
        raise RuntimeError(f"speech_data={cfg['speech_data']!r}: no utterance could be read")
    return torch.from_numpy(np.memmap(path, dtype=np.int16, mode="c")), spans, texts


class Crops:
    """Stage `codec`: random crops of utterances drawn from the mix, read when a batch needs them."""

    def __init__(self, speech):
        self.speech = speech

    def get_batch(self, batch_size, length, gen):
        """[batch_size, length] float: only each crop's stretch of its file is read."""
        out, mix, b = torch.zeros(batch_size, length), self.speech.mix, 0
        while b < batch_size:
            p, item = mix.pick(gen)
            s = int(torch.randint(max(1, item["n"] - length + 1), (), generator=gen))
            wav = mix.reader.read(_stretch(item, s, min(item["n"], s + length)))
            if wav is None or len(wav) == 0:
                mix.drop(p, item)
                continue
            wav = wav[:length]
            o = int(torch.randint(length - len(wav) + 1, (), generator=gen))   # a short one somewhere in silence
            out[b, o:o + len(wav)] = wav
            b += 1
        return out


def _stretch(item, s, e):
    """The item cut to its samples s..e (16 kHz)."""
    if "memmap" in item:
        return dict(item, memmap=(item["memmap"][0] + s, item["memmap"][0] + e))
    base = item["start"] or 0.0
    return dict(item, start=base + s / SAMPLE_RATE, end=base + e / SAMPLE_RATE)


class Clips:
    """Stage `asr`: one 'epoch' of the mix (Mix.sequence), read clip by clip: clips[i] is
    (int16 waveform, normalised text), read from disk; lengths and targets need no reading.
    A clip whose file fails to load is replaced for good by another of its corpus."""

    def __init__(self, speech, max_samples, min_samples, seed=0, trim=None):
        self.speech, self.trim = speech, trim
        keep = lambda it: min_samples <= it["n"] <= max_samples and normalize(it["text"])
        self.pools = [[it for it in items if keep(it)] for _, items in speech.mix.parts]
        self.pool_of = {id(it): k for k, pool in enumerate(self.pools) for it in pool}
        self.items = [it for it in speech.mix.sequence(sum(map(len, self.pools)), seed) if keep(it)]
        if not self.items:
            raise RuntimeError("speech_data: no utterance of a usable length with a transcript")
        self.lengths = [it["n"] for it in self.items]
        self.targets = _Targets(self)
        self.rng = random.Random(seed)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        while True:
            wav = self.speech.reader.read(self.items[i])
            if wav is not None:
                pcm = (wav * 32768.0).round().clamp(-32768, 32767).short()
                return (self.trim(pcm) if self.trim else pcm), normalize(self.items[i]["text"])
            pool = self.pools[self.pool_of[id(self.items[i])]]
            if self.items[i] in pool:   # (an item can come twice in an epoch)
                pool.remove(self.items[i])
            if not pool:
                raise RuntimeError("speech_data: every file of a corpus failed to load")
            self.items[i] = self.rng.choice(pool)


class _Targets:
    """clips.targets[i]: the CTC target of whatever clip i is now (see Clips.__getitem__)."""

    def __init__(self, clips):
        self.clips = clips

    def __getitem__(self, i):
        return ctc.encode_text(normalize(self.clips.items[i]["text"]))


def lm_texts(cfg, speech):
    """The beam search's spelling prior for a real corpus: its training transcripts, plus the
    SpokenWorld text corpus when SpokenWorld is part of the mix."""
    texts = [normalize(t) for t in speech.mix.texts()]
    if any(s["kind"] == "spokenworld" for s in speech.sources):
        texts += spokenworld.text_turns(cfg["data_dir"])
    return texts
