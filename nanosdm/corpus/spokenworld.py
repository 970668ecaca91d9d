"""
SpokenWorld: the embedded corpus, generated on the first run, and loaders for real data.

No data set can be downloaded, and a first run should not need one. So nanosdm makes its own:
a small *world* of invented creatures with facts about them (colour, home town, owner, number of
legs, food, material), plus arithmetic and "my name is ..." memory. The world becomes
  - a text corpus of facts and question/answer dialogues in many phrasings (text LM stage), and
  - two-channel spoken dialogues synthesized by eSpeak NG (assistant: one voice; users: many
    voices, pitches and rates) with realistic timing: a gap before each answer, pauses inside user
    turns, backchannels while the assistant speaks, and interruptions the assistant yields to.
    Every spoken word and phone has exact start and end times from the synthesizer.

Splits measure what the survey cares about (its §4.2 and §4.4.1: does the model keep its text knowledge?):
  train        seen facts, seen voices, training phrasings
  val          the same facts asked in held-out phrasings
  unseen_voice training phrasings, user voices that never occur in training
  text_only    questions on facts that occur in the text corpus only, never in any other spoken
               split: does text knowledge carry over to speech?

Files under data/<preset>/:
  text_train.jsonl, text_val.jsonl  {"turns": [[role, text], ...]}, role in text|user|assistant
  qa_eval.jsonl                     held-out-phrasing questions with the answer word to check
  speech_<split>.bin                int16 stereo, [samples, 2]: channel 0 assistant, 1 user (Moshi's order)
  speech_<split>.jsonl              one dialogue per line: offset, length and every turn's timings
"""
import json
import multiprocessing as mp
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from nanosdm import utils
from nanosdm.corpus import audio

SAMPLE_RATE = audio.SAMPLE_RATE
ASSISTANT, USER = 0, 1                     # channel index in the stereo files
SPEECH_SPLITS = ("train", "val", "unseen_voice", "text_only")
CORPUS_VERSION = 4                         # bump when generation changes: a cached corpus is then rebuilt
ASSISTANT_VOICE = dict(voice="en-us+f3", rate=165, pitch=55)
ASSISTANT_PEAK = 0.6                       # utterances are peak-normalised: some eSpeak voices clip
# eSpeak variants too far from speech (whispers, robots, effects) for a corpus of an hour or so
ODD_VARIANTS = {"whisper", "whisperf", "croak", "Demonic", "UniRobot", "anikaRobot", "Tweaky", "robosoft",
                "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8"}

# -----------------------------------------------------------------------------
# the world

COLOURS = "red blue green yellow black white orange purple pink brown grey golden".split()
TOWNS = "paris london tokyo cairo lima oslo rome berlin madrid delhi sydney dublin vienna prague lisbon boston".split()
PEOPLE = "ana ben carla david emma felix gina hugo iris jack kate leo mia nora omar paul rosa sam tina victor wendy zoe".split()
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
FOODS = "apples bread rice fish cheese honey carrots grapes nuts soup beans plums".split()
MATERIALS = "wood stone glass iron paper cloth clay gold copper wool leather sand".split()

# attribute -> (values, fact phrasings, its own question phrasings, the noun that names it, reply)
_ATTRS = {
    "colour": (COLOURS, ["the {e} is {v}.", "the colour of the {e} is {v}.", "every {e} is {v}."],
               ["what colour is the {e}?", "which colour does the {e} have?"], "colour", "the {e} is {v}."),
    "town": (TOWNS, ["the {e} lives in {v}.", "you can find the {e} in {v}.", "the home town of the {e} is {v}."],
             ["where does the {e} live?", "where can i find the {e}?"], "home town", "the {e} lives in {v}."),
    "owner": (PEOPLE, ["the {e} belongs to {v}.", "{v} owns the {e}.", "the owner of the {e} is {v}."],
              ["who owns the {e}?", "who does the {e} belong to?"], "owner", "the {e} belongs to {v}."),
    "legs": (NUMBERS[2:13], ["the {e} has {v} legs.", "a {e} walks on {v} legs.", "the number of legs of the {e} is {v}."],
             ["how many legs does the {e} have?", "on how many legs does the {e} walk?"], "number of legs",
             "the {e} has {v} legs."),
    "food": (FOODS, ["the {e} eats {v}.", "the favourite food of the {e} is {v}.", "the {e} likes to eat {v}."],
             ["what does the {e} eat?", "what does the {e} like to eat?"], "favourite food", "the {e} eats {v}."),
    "material": (MATERIALS, ["the {e} is made of {v}.", "the material of the {e} is {v}.", "they make the {e} from {v}."],
                 ["what is the {e} made of?", "what do they make the {e} from?"], "material", "the {e} is made of {v}."),
}
# Held-out questions must test knowledge, not guessing: each is a question *frame* the model has seen
# with other attributes, filled with an attribute noun it has seen in other frames. (A held-out
# phrasing of a new shape is answered by analogy to whichever training question it looks like.)
QUESTION_FRAMES = ["what is the {a} of the {e}?", "tell me the {a} of the {e}.", "do you know the {a} of the {e}?",
                   "i want to know the {a} of the {e}.", "can you say the {a} of the {e}?", "please name the {a} of the {e}."]
ATTRIBUTES = {}  # attribute -> (values, fact phrasings, training questions, held-out questions, reply)
for _i, (_attr, (_values, _facts, _own, _noun, _reply)) in enumerate(_ATTRS.items()):
    _held = {_i % len(QUESTION_FRAMES), (_i + 1) % len(QUESTION_FRAMES)}   # a Latin square over frames
    _frames = [f.replace("{a}", _noun) for f in QUESTION_FRAMES]
    ATTRIBUTES[_attr] = (_values, _facts, _own + [f for j, f in enumerate(_frames) if j not in _held],
                         [f for j, f in enumerate(_frames) if j in _held], _reply)
ARITH = (["what is {a} {op} {b}?", "tell me {a} {op} {b}.", "can you work out {a} {op} {b}?"],
         ["how much is {a} {op} {b}?", "what do you get for {a} {op} {b}?"],
         "{a} {op} {b} is {c}.")
MEMORY = {  # told fact, assistant's acknowledgement, training questions, held-out questions, reply
    "name": ("my name is {v}.", "nice to meet you, {v}.", ["what is my name?", "tell me my name."],
             ["do you remember my name?"], "your name is {v}.", PEOPLE),
    "home": ("i live in {v}.", "{v} is a nice town.", ["where do i live?", "tell me where i live."],
             ["do you remember where i live?"], "you live in {v}.", TOWNS),
}
PREFACES = ["okay.", "so.", "well.", "hmm.", "let me think.", "i have a question."]
BACKCHANNELS = ["yeah.", "okay.", "right.", "uh huh.", "i see."]
SYLLABLES = [c + v for c in "b d f g k l m n p r s t v z sh ch".split() for v in "a e i o u".split()]
CODAS = ["", "", "n", "r", "l", "m", "k", "s"]


def make_world(n_entities, text_only_frac, seed):
    """Invented creatures with one value per attribute; names are pronounceable non-words so that
    nothing about them can be guessed, only learned."""
    rng = random.Random(seed)
    taken = set(COLOURS + TOWNS + PEOPLE + NUMBERS + FOODS + MATERIALS)
    names = []
    while len(names) < n_entities:
        name = rng.choice(SYLLABLES) + rng.choice(SYLLABLES) + rng.choice(CODAS)
        if name not in taken:
            taken.add(name)
            names.append(name)
    n_text_only = int(round(n_entities * text_only_frac))
    return [dict(name=name, text_only=i < n_text_only,
                 **{a: rng.choice(spec[0]) for a, spec in ATTRIBUTES.items()})
            for i, name in enumerate(names)]


# -----------------------------------------------------------------------------
# exchanges: one user question and the assistant's reply, from a template set

def fact_exchange(rng, ent, attr, held_out):
    values, _, train_q, held_q, reply = ATTRIBUTES[attr]
    q = rng.choice(held_q if held_out else train_q).format(e=ent["name"])
    return dict(kind="fact", question=q, reply=reply.format(e=ent["name"], v=ent[attr]),
                answer=ent[attr], text_only=ent["text_only"], context=[])


def arith_exchange(rng, held_out):
    a, b = rng.randint(0, 10), rng.randint(0, 10)
    op, c = ("plus", a + b) if rng.random() < 0.5 or a < b else ("minus", a - b)
    train_q, held_q, reply = ARITH
    fmt = dict(a=NUMBERS[a], b=NUMBERS[b], op=op, c=NUMBERS[c])
    return dict(kind="arith", question=rng.choice(held_q if held_out else train_q).format(**fmt),
                reply=reply.format(**fmt), answer=NUMBERS[c], text_only=False, context=[])


def memory_exchanges(rng, held_out):
    """Two exchanges: the user tells something, then asks it back."""
    told, ack, train_q, held_q, reply, values = MEMORY[rng.choice(sorted(MEMORY))]
    v = rng.choice(values)
    tell = dict(kind="tell", question=told.format(v=v), reply=ack.format(v=v), answer=None,
                text_only=False, context=[])
    ask = dict(kind="memory", question=rng.choice(held_q if held_out else train_q), reply=reply.format(v=v),
               answer=v, text_only=False, context=[])
    return tell, ask


def random_exchanges(rng, world, n, held_out, ask_at_once=True):
    """n exchanges mixing facts (most), arithmetic and memory pairs, in random order. ask_at_once:
    a memory question right after its telling (spoken dialogues: a telling anywhere earlier was a
    median 10-12 s back, often outside the model's 20 s windows, and it learnt to guess a name);
    else anywhere after it (text documents: a text LM that copies across a document hands that on;
    taught to copy from ten tokens back only, the dual-stream model never copied at all)."""
    out = []
    while len(out) < n:
        r = rng.random()
        if r < 0.12:
            out.append(arith_exchange(rng, held_out))
        elif r < 0.2 and n - len(out) >= 2:
            tell, ask = memory_exchanges(rng, held_out)
            if ask_at_once:
                out += [tell, ask]
            else:
                out.insert(rng.randint(0, len(out)), tell)
                out.append(ask)
        else:
            out.append(fact_exchange(rng, rng.choice(world), rng.choice(list(ATTRIBUTES)), held_out))
    return out


# -----------------------------------------------------------------------------
# the text corpus

def text_document(rng, world):
    if rng.random() < 0.5:   # a paragraph of facts about one creature, in random phrasings and order
        ent = rng.choice(world)
        attrs = rng.sample(list(ATTRIBUTES), rng.randint(2, len(ATTRIBUTES)))
        facts = [rng.choice(ATTRIBUTES[a][1]).format(e=ent["name"], v=ent[a]) for a in attrs]
        return {"turns": [["text", " ".join(facts)]]}
    turns = []
    for ex in random_exchanges(rng, world, rng.randint(1, 4), held_out=False, ask_at_once=False):
        turns += [["user", ex["question"]], ["assistant", ex["reply"]]]
    return {"turns": turns}


def qa_eval_items(rng, world, n_arith, n_memory):
    """Every fact asked once in a held-out phrasing, plus arithmetic and memory questions."""
    items = [fact_exchange(rng, ent, a, held_out=True) for ent in world for a in ATTRIBUTES]
    items += [arith_exchange(rng, held_out=True) for _ in range(n_arith)]
    for _ in range(n_memory):
        tell, ask = memory_exchanges(rng, held_out=True)
        ask["context"] = [["user", tell["question"]], ["assistant", tell["reply"]]]
        items.append(ask)
    return items


def write_jsonl(path, records):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def text_turns(data_dir):
    """Every turn of the SpokenWorld text corpus (data/<preset>/text_train.jsonl), as text."""
    return [text for doc in read_jsonl(os.path.join(data_dir, "text_train.jsonl")) for _, text in doc["turns"]]


# -----------------------------------------------------------------------------
# spoken dialogues: a plan (texts, voices, timing choices) made here, rendered to audio in workers

def split_voices(all_voices, seed):
    """Hold out whole voice variants (e.g. every '+m3' voice) so unseen voices are really new."""
    users = [v for v in all_voices if v != ASSISTANT_VOICE["voice"] and v.split("+")[-1] not in ODD_VARIANTS]
    variants = sorted({v.split("+")[1] if "+" in v else "" for v in users})
    held = set(random.Random(seed).sample(variants, max(1, len(variants) // 6)))
    unseen = [v for v in users if (v.split("+")[1] if "+" in v else "") in held]
    return [v for v in users if v not in unseen], unseen


def plan_dialogue(rng, world, voices, held_out):
    """What a dialogue will say and when. The timing choices are what the full-duplex model learns
    its behaviour from (eval/duplex.py measures it): wait through a pause inside the user's turn, answer
    quickly when the turn ends, keep talking through a backchannel, stop when interrupted, stay
    quiet through a long silence."""
    user = dict(voice=rng.choice(voices), rate=rng.randint(140, 210), pitch=rng.randint(25, 75))
    plan = []
    for ex in random_exchanges(rng, world, rng.randint(4, 8), held_out):
        n_words = len(ex["question"].split())
        plan.append(dict(ex, preface=rng.choice(PREFACES) if rng.random() < 0.3 else None,
                         # a hesitation inside the question: the first `split` words, a pause, the rest
                         split=rng.randint(2, n_words - 1) if n_words >= 3 and rng.random() < 0.2 else None,
                         pause=rng.uniform(0.5, 1.5),              # after the preface or the split
                         gap=rng.uniform(0.1, 0.4),                # before the assistant answers
                         after=rng.uniform(3.0, 8.0) if rng.random() < 0.15 else rng.uniform(0.5, 1.5),
                         backchannel=rng.choice(BACKCHANNELS) if rng.random() < 0.4 else None,
                         backchannel_at=rng.uniform(0.3, 0.6),     # share of the answer said before it
                         interrupt=rng.uniform(0.35, 0.7) if rng.random() < 0.25 else None,
                         reaction=rng.uniform(0.1, 0.3)))          # how fast the assistant yields
    return dict(user=user, user_peak=rng.uniform(0.25, 0.9), lead=rng.uniform(0.2, 0.6), exchanges=plan)


def render_dialogue(plan):
    """Synthesize and place every utterance on the two channels. Runs in a worker process."""
    from nanosdm.corpus import espeak
    chans = [[], []]              # (start_sample, float wav) pieces per channel
    turns = []

    def place(channel, text, start, **info):
        voice = ASSISTANT_VOICE if channel == ASSISTANT else plan["user"]
        wav, words, phones = espeak.synthesize(text, **voice)
        wav *= (ASSISTANT_PEAK if channel == ASSISTANT else plan["user_peak"]) / max(1e-4, np.abs(wav).max())
        chans[channel].append((int(round(start * SAMPLE_RATE)), wav))
        turns.append(dict(speaker="assistant" if channel == ASSISTANT else "user", text=text, start=start,
                          end=start + len(wav) / SAMPLE_RATE, **info,
                          words=[[w, start + s, start + e] for w, s, e in words],
                          phones=[[p, start + s, start + e] for p, s, e in phones]))
        return turns[-1]

    t = plan["lead"]
    for ex in plan["exchanges"]:
        if ex["preface"]:
            t = place(USER, ex["preface"], t, kind="preface")["end"] + ex["pause"]
        info = dict(kind="question", answer=ex["answer"], text_only=ex["text_only"])
        if ex.get("split"):       # one turn spoken in two pieces with a pause between them
            words = ex["question"].split()
            q = place(USER, " ".join(words[:ex["split"]]), t, **info)
            rest = place(USER, " ".join(words[ex["split"]:]), q["end"] + ex["pause"])
            turns.pop()
            q.update(text=ex["question"], pause=[q["end"], rest["start"]], end=rest["end"],
                     words=q["words"] + rest["words"], phones=q["phones"] + rest["phones"])
        else:
            q = place(USER, ex["question"], t, **info)
        t = q["end"] + ex["gap"]
        a = place(ASSISTANT, ex["reply"], t, kind="answer", interrupted=False)
        dur = a["end"] - a["start"]
        if ex["interrupt"] is not None and ex is not plan["exchanges"][-1]:
            # the user barges in with the next question; the assistant stops `reaction` s later
            nxt = a["start"] + ex["interrupt"] * dur
            cut = nxt + ex["reaction"]
            _truncate(chans[ASSISTANT], a, cut)
            t = nxt
            continue
        if ex["backchannel"] and dur > 1.2:
            place(USER, ex["backchannel"], a["start"] + ex.get("backchannel_at", 0.45) * dur, kind="backchannel")
        t = a["end"] + ex["after"]
    n = int(np.ceil(max(tr["end"] for tr in turns) * SAMPLE_RATE)) + int(0.3 * SAMPLE_RATE)
    stereo = np.zeros((n, 2), dtype=np.float32)
    for c in (ASSISTANT, USER):
        for s, wav in chans[c]:
            stereo[s:s + len(wav), c] += wav
    turns.sort(key=lambda tr: tr["start"])
    pcm = (np.clip(stereo, -1, 1) * 32767).round().astype(np.int16)
    return pcm, turns


def _truncate(pieces, turn, cut):
    """Cut the last placed assistant utterance at time `cut` (20 ms fade) and keep only the
    words and phones it finished before the cut."""
    start, wav = pieces[-1]
    keep = int(round((cut - turn["start"]) * SAMPLE_RATE))
    fade = min(keep, int(0.02 * SAMPLE_RATE))
    wav = wav[:keep].copy()
    wav[keep - fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    pieces[-1] = (start, wav)
    turn.update(end=cut, interrupted=True,
                words=[w for w in turn["words"] if w[2] <= cut], phones=[p for p in turn["phones"] if p[2] <= cut])
    turn["text"] = " ".join(w[0] for w in turn["words"])


def write_speech_split(data_dir, name, plans, pool):
    """Render dialogues in a process pool and stream them to disk as they come: the corpus is never
    held in memory. Files appear under their final names only when complete."""
    bin_path, meta_path = (os.path.join(data_dir, f"speech_{name}.{ext}") for ext in ("bin", "jsonl"))
    offset = 0
    with open(bin_path + ".tmp", "wb") as fb, open(meta_path + ".tmp", "w") as fm:
        rendered = pool.imap(render_dialogue, plans, chunksize=2)
        for i, (plan, (pcm, turns)) in enumerate(tqdm(zip(plans, rendered), total=len(plans),
                                                      desc=f"speech {name}", unit="dlg")):
            fb.write(pcm.tobytes())
            fm.write(json.dumps(dict(id=f"{name}-{i:05d}", offset=offset, length=len(pcm),
                                     user_voice=dict(plan["user"], peak=plan["user_peak"]),
                                     turns=turns)) + "\n")
            offset += len(pcm)
    os.replace(bin_path + ".tmp", bin_path)
    os.replace(meta_path + ".tmp", meta_path)
    return offset / SAMPLE_RATE


class SpeechSplit:
    """One spoken split through a memory map: dialogues, or single turns cut out of them."""

    def __init__(self, data_dir, split):
        bin_path = os.path.join(data_dir, f"speech_{split}.bin")
        if not os.path.exists(bin_path):
            raise FileNotFoundError(f"{bin_path} missing: run `python train.py --stage=data` first")
        self.pcm = np.memmap(bin_path, dtype=np.int16, mode="r").reshape(-1, 2)
        self.dialogues = read_jsonl(os.path.join(data_dir, f"speech_{split}.jsonl"))

    def __len__(self):
        return len(self.dialogues)

    def dialogue(self, i):
        """(float wav [2, T] with channel 0 = assistant, 1 = user, metadata with times in seconds)"""
        d = self.dialogues[i]
        x = self.pcm[d["offset"]: d["offset"] + d["length"]]
        return torch.from_numpy(x.T.astype(np.float32) / 32768.0), d

    def utterances(self, speaker=None, kinds=("question", "answer", "preface", "backchannel")):
        """Yield (wav [T], turn) for single turns; the turn's word/phone times are made relative."""
        for d in self.dialogues:
            for tr in d["turns"]:
                if (speaker and tr["speaker"] != speaker) or tr["kind"] not in kinds or not tr["words"]:
                    continue
                ch = ASSISTANT if tr["speaker"] == "assistant" else USER
                s, e = (int(round(t * SAMPLE_RATE)) for t in (tr["start"], tr["end"]))
                x = self.pcm[d["offset"] + s: d["offset"] + min(e, d["length"]), ch]
                shift = lambda items: [[a, b - tr["start"], c - tr["start"]] for a, b, c in items]
                yield (torch.from_numpy(x.astype(np.float32) / 32768.0),
                       dict(tr, start=0.0, end=len(x) / SAMPLE_RATE, words=shift(tr["words"]),
                            phones=shift(tr["phones"]), dialogue=d["id"]))


# -----------------------------------------------------------------------------
# the data stage

def build(cfg):
    """Generate the whole corpus under cfg['data_dir'] (skipped when it exists for this config)."""
    from nanosdm.corpus import espeak
    data_dir, seed = cfg["data_dir"], cfg["seed"]
    keys = ("data_entities", "data_text_only_frac", "data_text_docs", "data_dialogues", "data_eval_dialogues", "seed")
    want = dict({k: cfg[k] for k in keys}, version=CORPUS_VERSION)
    done_path = os.path.join(data_dir, "corpus.json")
    if os.path.exists(done_path):
        with open(done_path) as f:
            done = json.load(f)
        if done["config"] == want:
            print(f"corpus in {data_dir} is complete for this config; not regenerated")
            _plot_dialogue(cfg)
            return done["metrics"]
    os.makedirs(data_dir, exist_ok=True)
    t0 = time.time()
    world = make_world(cfg["data_entities"], cfg["data_text_only_frac"], seed)
    rng = random.Random(seed + 1)
    write_jsonl(os.path.join(data_dir, "world.jsonl"), world)
    write_jsonl(os.path.join(data_dir, "text_train.jsonl"), (text_document(rng, world) for _ in range(cfg["data_text_docs"])))
    write_jsonl(os.path.join(data_dir, "text_val.jsonl"), (text_document(rng, world) for _ in range(max(200, cfg["data_text_docs"] // 50))))
    write_jsonl(os.path.join(data_dir, "qa_eval.jsonl"), qa_eval_items(rng, world, 100, 100))

    seen_voices, unseen_voices = split_voices(espeak.voices(), seed)
    spoken = [e for e in world if not e["text_only"]]
    text_only = [e for e in world if e["text_only"]]
    n_eval = cfg["data_eval_dialogues"]
    plans = {  # each split from its own RNG stream, so changing one size never reshuffles another
        "train": [plan_dialogue(rng, spoken, seen_voices, held_out=False) for _ in range(cfg["data_dialogues"])],
        "val": [plan_dialogue(random.Random(seed + 2 + i), spoken, seen_voices, True) for i in range(n_eval)],
        "unseen_voice": [plan_dialogue(random.Random(seed + 10**6 + i), spoken, unseen_voices, False) for i in range(n_eval)],
        "text_only": [plan_dialogue(random.Random(seed + 2 * 10**6 + i), text_only, seen_voices, False) for i in range(n_eval)],
    }
    # a fresh worker for each chunk of dialogues: eSpeak's output depends on what its process spoke
    # before, so a long-lived worker's history (whichever chunks it happened to take) would change the audio
    with mp.Pool(cfg.get("workers") or os.cpu_count(), maxtasksperchild=1) as pool:
        hours = {name: write_speech_split(data_dir, name, p, pool) / 3600 for name, p in plans.items()}
    seconds = time.time() - t0
    size = sum(os.path.getsize(os.path.join(data_dir, f)) for f in os.listdir(data_dir))
    metrics = {f"data_hours_{k}": round(v, 3) for k, v in hours.items()}
    metrics.update(data_gen_audio_hours_per_min=round(sum(hours.values()) / (seconds / 60), 3),
                   data_size_mb=round(size / 2**20, 1), data_seen_voices=len(seen_voices),
                   data_unseen_voices=len(unseen_voices), data_entities=len(world))
    with open(done_path + ".tmp", "w") as f:
        json.dump(dict(config=want, metrics=metrics, seen_voices=seen_voices, unseen_voices=unseen_voices), f, indent=1)
    os.replace(done_path + ".tmp", done_path)
    _plot_dialogue(cfg)
    return metrics


def _plot_dialogue(cfg, index=0):
    """Both channels' waveforms of one training dialogue, with each spoken word drawn on its span."""
    wav, d = SpeechSplit(cfg["data_dir"], "train").dialogue(index)
    t = np.arange(wav.shape[1]) / SAMPLE_RATE
    fig, axes = utils.figure(2, 1, figsize=(16, 5), sharex=True)
    for ax, ch, who, colour in ((axes[0], ASSISTANT, "assistant", "tab:blue"), (axes[1], USER, "user", "tab:orange")):
        ax.plot(t, wav[ch].numpy(), lw=0.3, color=colour)
        ax.set_ylabel(who)
        ax.set_ylim(-1, 1)
        for tr in d["turns"]:
            if tr["speaker"] != who:
                continue
            for i, (w, s, e) in enumerate(tr["words"]):
                ax.axvspan(s, e, color=colour, alpha=0.12)
                ax.text((s + e) / 2, 0.75 - 0.25 * (i % 2), w, ha="center", fontsize=6)
    axes[1].set_xlabel("seconds")
    axes[0].set_title(f"SpokenWorld dialogue {d['id']}: word alignments from eSpeak NG")
    path = os.path.join(cfg["out_dir"], "plots", "dialogue.png")
    utils.save_figure(fig, path)
