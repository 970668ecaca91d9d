"""
The flat paradigms: one decoder-only LM that reads and writes text tokens and speech units in a
single sequence (the survey's §4.1: chain of modality, interleaving, speech to speech).

    joint vocabulary   [0, n_text)                 the text tokenizer's ids (BOS, EOS, USER, ...)
                       [n_text, n_text + n_units)  the units of units.py, deduplicated (50 Hz runs collapsed)
                       then three markers          [SPEECH] units follow, [TEXT] the words of what is said
                                                   follow, [ANSWER] the answer's text follows
    model              the text LM (textlm.TextLM) with its embedding and its head grown by one row
                       per unit and per marker; everything else is the text LM as trained

Sequence formats (every speech span opens with [SPEECH], so the modality is known at every position):

    chain of modality (SpeechGPT): hear, transcribe, answer in text, then speak the answer
        BOS USER [SPEECH] <question units> EOS ASSISTANT [TEXT] <transcript> [ANSWER] <answer> [SPEECH] <answer units> EOS
    speech dialogue (Spirit-LM's fine-tuning; without any text training, the flat speech-to-speech row)
        BOS USER [SPEECH] <question units> EOS ASSISTANT [SPEECH] <answer units> EOS
    speech dialogue, answer words interleaved: each answer word's text, then its units
        ... ASSISTANT [ANSWER] <word 1> [SPEECH] <its units> [ANSWER] <word 2> [SPEECH] <its units> ... EOS
    interleaved pre-training (Spirit-LM): one spoken turn, the modality switching at random word
    boundaries, a marker only where it switches; plus speech-only turns and the text LM's own
    documents, in equal shares
        BOS [TEXT] the kotan [SPEECH] <units of "is red"> [TEXT] today EOS      BOS [SPEECH] <units> EOS

Training is nanoGPT's loop over padded batches of such sequences; in a dialogue the loss counts the
assistant's reply only (the question is given). Generation runs one token a step with the KV cache,
and can be held to the modality the last marker opened (no text inside a speech span).

    model, v = load_model("out/tiny/flat_chain.pt")
    new, _ = generate(model, v, dialogue_prompt(v, question_units), 200)
    parse_dialogue(v, dialogue_prompt(v, question_units) + new)   # transcript, answer, answer units
"""
import os
import random
import time

import torch
from tqdm import tqdm

from nanosdm import utils
from nanosdm.corpus import spokenworld
from nanosdm.textlm import TextLM
from nanosdm.tokenizer import ASSISTANT, BOS, EOS, EPAD, PAD, TEXT, USER, Tokenizer
from nanosdm.transformer import sample_logits
from nanosdm.units import HOP, SAMPLE_RATE, Units, dedup
from nanosdm.utils import count_params

UNIT_S = HOP / SAMPLE_RATE          # 0.02 s: one unit frame
MARKERS = ("[SPEECH]", "[TEXT]", "[ANSWER]")
SWITCH_PROB = 0.3                   # interleaving: chance that the modality switches at a word boundary
IGNORE = -100                       # a target the loss skips (F.cross_entropy's ignore_index)
TEXT_SPECIALS = (PAD, EPAD, BOS, EOS, USER, ASSISTANT, TEXT)   # the tokenizer's markers (UNK is text)


class Vocab:
    """Where each kind of id lives in the joint vocabulary."""

    def __init__(self, n_text, n_units):
        self.n_text, self.n_units = n_text, n_units
        self.speech, self.text, self.answer = range(n_text + n_units, n_text + n_units + len(MARKERS))
        self.size = n_text + n_units + len(MARKERS)

    def units(self, unit_ids):
        """Unit ids (0 .. n_units - 1) -> joint ids."""
        return [self.n_text + int(u) for u in unit_ids]

    def is_unit(self, i):
        return self.n_text <= i < self.n_text + self.n_units

    def is_marker(self, i):
        return i in TEXT_SPECIALS or i >= self.n_text + self.n_units


# -----------------------------------------------------------------------------
# the model: the text LM, grown

def grow(text_lm, n_units, block_size=None, init="mean", seed=0):
    """A TextLM over the joint vocabulary whose blocks and first n_text embedding and head rows are
    text_lm's (copied: text-only input gives the text LM's logits on the text ids). The new rows:
      mean    the mean of the text rows, plus noise of 1/10 of their spread: a new token starts where
              an average token is, so it neither grabs probability mass from the text (its logits are
              an average token's) nor feeds the blocks an input they never saw; the noise tells the
              units apart
      normal  N(0, 0.02), a fresh LM's initialisation: new inputs near zero, new logits near zero
    block_size: positions the grown model covers (the rotary tables are recomputed, no weight changes)."""
    v = Vocab(text_lm.config["vocab_size"], n_units)
    model = TextLM(**dict(text_lm.config, vocab_size=v.size, block_size=block_size or text_lm.config["block_size"]))
    model = model.to(text_lm.embed.weight.device)
    model.transformer.load_state_dict(text_lm.transformer.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for new, old in ((model.embed.weight, text_lm.embed.weight), (model.head.weight, text_lm.head.weight)):
            new[:v.n_text] = old
            noise = torch.randn(v.size - v.n_text, old.shape[1], generator=gen).to(old.device)
            if init == "mean":
                new[v.n_text:] = old.mean(0) + 0.1 * old.std(0) * noise
            elif init == "normal":
                new[v.n_text:] = 0.02 * noise
            else:
                raise ValueError(f"flat_init={init!r}: expected 'mean' or 'normal'")
    return model, v


def start_model(path, n_units, block_size, init, seed):
    """From a text LM checkpoint (grown) or from a flat one (as it is: a fine-tune after pre-training)."""
    ckpt = utils.load_checkpoint(path)
    if "vocab" in ckpt:
        return load_model(path)
    text_lm = TextLM(**ckpt["config"])
    text_lm.load_state_dict(ckpt["model"])
    return grow(text_lm, n_units, block_size, init, seed)


def load_model(path, device="cpu"):
    """(model in eval mode, its Vocab) from a flat checkpoint."""
    ckpt = utils.load_checkpoint(path, device)
    return utils.load_model(TextLM, path, device), Vocab(**ckpt["vocab"])


# -----------------------------------------------------------------------------
# sequence formats: build, print, parse

def dialogue_prompt(v, question_units):
    """What every dialogue format is given: the spoken question, then the assistant's turn marker."""
    return [BOS, USER, v.speech] + v.units(question_units) + [EOS, ASSISTANT]


def chain_reply(v, transcript, answer, answer_units):
    """SpeechGPT's chain of modality: text ids of the transcript and of the answer, then its units."""
    return [v.text] + list(transcript) + [v.answer] + list(answer) + [v.speech] + v.units(answer_units) + [EOS]


def speech_reply(v, answer_units):
    return [v.speech] + v.units(answer_units) + [EOS]


def words_reply(v, word_texts, word_units):
    """Each answer word's text ids, then the units of that word."""
    ids = []
    for text, units in zip(word_texts, word_units):
        ids += [v.answer] + list(text) + [v.speech] + v.units(units)
    return ids + [EOS]


def dialogue(v, question_units, reply):
    """(ids, n_prompt): the prompt and a reply; the loss counts the reply only."""
    prompt = dialogue_prompt(v, question_units)
    return prompt + reply, len(prompt)


def interleaved(v, word_texts, word_units, rng, switch_prob=SWITCH_PROB):
    """Spirit-LM: one utterance, each word as text or as its units, the modality switching at a
    word boundary with probability switch_prob; a marker opens each run of one modality."""
    ids, speech = [BOS], rng.random() < 0.5
    for i, (text, units) in enumerate(zip(word_texts, word_units)):
        if i == 0 or rng.random() < switch_prob:
            speech = speech if i == 0 else not speech
            ids.append(v.speech if speech else v.text)
        ids += v.units(units) if speech else list(text)
    return ids + [EOS]


def speech_only(v, units):
    return [BOS, v.speech] + v.units(units) + [EOS]


def segments(v, ids):
    """[(marker, [ids after it, up to the next marker])] in order: the parse of every format."""
    out = []
    for i in ids:
        if v.is_marker(i):
            out.append((i, []))
        elif out:
            out[-1][1].append(i)
        else:
            out.append((None, [i]))
    return out


def parse_dialogue(v, ids):
    """A dialogue sequence -> question units, transcript and answer (text ids), answer units
    (unit ids): what each marker holds in its turn, the payloads of a marker joined in order."""
    out = dict(question_units=[], transcript=[], answer=[], answer_units=[])
    role = None
    for marker, payload in segments(v, ids):
        if marker in (USER, ASSISTANT):
            role = marker
        elif marker == v.speech:
            key = "question_units" if role == USER else "answer_units"
            out[key] += [i - v.n_text for i in payload if v.is_unit(i)]
        elif marker == v.text and role == ASSISTANT:
            out["transcript"] += payload
        elif marker == v.answer and role == ASSISTANT:
            out["answer"] += payload
    return out


def parse_interleaved(v, ids):
    """An interleaved (or speech-only) sequence -> [("text", text ids) or ("speech", unit ids)]."""
    runs = []
    for marker, payload in segments(v, ids):
        if marker == v.speech:
            runs.append(("speech", [i - v.n_text for i in payload]))
        elif marker == v.text:
            runs.append(("text", payload))
    return runs


def show(v, tok, ids):
    """A sequence as a student reads it: markers by name, text decoded, units as u<id>."""
    names = {PAD: "PAD", EPAD: "EPAD", BOS: "BOS", EOS: "EOS", USER: "USER", ASSISTANT: "ASSISTANT", TEXT: "TEXT"}
    names.update({v.speech: MARKERS[0], v.text: MARKERS[1], v.answer: MARKERS[2]})
    words = []
    for marker, payload in segments(v, ids):
        if marker is not None:
            words.append(names[marker])
        units = [f"u{i - v.n_text}" for i in payload if v.is_unit(i)]
        text = tok.decode([i for i in payload if not v.is_unit(i)])
        words += units or ([repr(text)] if text else [])
    return " ".join(words)


# -----------------------------------------------------------------------------
# generation: one token a step with the KV cache

def modality_masks(v, device="cpu"):
    """Allowed next ids, bool [2, V]: row 0 inside text (anything but a unit), row 1 inside a speech
    span (a unit, EOS, or a marker back to text)."""
    text = torch.ones(v.size, dtype=torch.bool)
    text[v.n_text:v.n_text + v.n_units] = False
    speech = ~text
    speech[[EOS, v.text, v.answer]] = True
    return torch.stack([text, speech]).to(device)


@torch.no_grad()
def generate(model, v, prompt, max_new_tokens, temperature=0.0, top_k=None, constrain=True):
    """Continue one sequence (a list of ids) one token a step with a KV cache, until EOS.
    constrain: hold every new token to the modality the last marker opened (an untrained model
    writes units into text and words into speech). Returns (new ids, the logits [n, V] each was
    drawn from, before the constraint)."""
    pairs = list(stream(model, v, prompt, max_new_tokens, temperature, top_k, constrain))
    return [i for i, _ in pairs], torch.stack([logits for _, logits in pairs])


@torch.no_grad()
def stream(model, v, prompt, max_new_tokens, temperature=0.0, top_k=None, constrain=True):
    """generate()'s loop, one (id, logits) at a time as they come: a live caller can send each unit
    to the vocoder before the reply is finished."""
    device = model.embed.weight.device
    n = min(max_new_tokens, model.config["block_size"] - len(prompt))
    if n <= 0:
        raise ValueError(f"a prompt of {len(prompt)} ids leaves no room in block_size={model.config['block_size']}")
    cache = model.transformer.new_kv_cache(1, len(prompt) + n, device)
    masks = modality_masks(v, device)
    markers = [i for i in prompt if v.is_marker(i)]
    in_speech = bool(markers) and markers[-1] == v.speech
    x = torch.tensor([prompt], device=device)      # the first step reads the whole prompt
    for _ in range(n):
        logits = model(x, kv_cache=cache)[0, -1]
        raw = logits
        if constrain:
            logits = logits.masked_fill(~masks[int(in_speech)], float("-inf"))
        nxt = int(sample_logits(logits[None], temperature, top_k)[0])
        yield nxt, raw
        if nxt == EOS:
            break
        if v.is_marker(nxt):
            in_speech = nxt == v.speech
        x = torch.tensor([[nxt]], device=device)


def respond(model, v, question_units, start=(), max_new_tokens=300, **sampling):
    """The reply to a spoken question (its unit ids), parsed as parse_dialogue, plus its ids.
    start: ids the reply is made to begin with, e.g. [v.speech] for a model of the speech dialogue
    (a weak model may otherwise open its reply in a modality it was never trained to write)."""
    prompt = dialogue_prompt(v, question_units) + list(start)
    new, _ = generate(model, v, prompt, max_new_tokens, **sampling)
    return dict(parse_dialogue(v, prompt + new), reply=list(start) + new)


# -----------------------------------------------------------------------------
# data: SpokenWorld's turns as units, whole and word by word

def word_units(frames, words):
    """Each word's deduplicated units: the 50 Hz frames [int(s / UNIT_S), int(e / UNIT_S)) of its
    timings (seconds from the turn's start), at least one. Silences between words belong to no word."""
    out = []
    for _, s, e in words:
        a = min(int(s / UNIT_S), len(frames) - 1)
        b = max(a + 1, int(e / UNIT_S))
        out.append(dedup(frames[a:b])[0].tolist())
    return out


def spoken_turns(cfg, units, split):
    """Every spoken turn of a split in dialogue order: its text, words, units (the whole turn,
    deduplicated), each word's units, and a question's answer word (None elsewhere)."""
    from nanosdm.vocoder import unit_frames      # the units of many wavs, cached under out/<preset>/cache
    items = list(spokenworld.SpeechSplit(cfg["data_dir"], split).utterances())
    frames = unit_frames(units, [w for w, _ in items], cfg, f"flat_{split}")
    return [dict(dialogue=tr["dialogue"], speaker=tr["speaker"], kind=tr["kind"], text=tr["text"],
                 interrupted=tr.get("interrupted", False), answer=tr.get("answer"), words=[w for w, _, _ in tr["words"]],
                 units=dedup(f.long())[0].tolist(), word_units=word_units(f.long(), tr["words"]))
            for (_, tr), f in zip(items, frames)]


def exchanges(turns):
    """(question, answer) pairs: a question and the assistant's answer right after it, unless the
    answer was interrupted (it stops mid-sentence)."""
    return [(q, a) for q, a in zip(turns, turns[1:]) if q["kind"] == "question" and a["kind"] == "answer"
            and a["dialogue"] == q["dialogue"] and not a["interrupted"]]


def build_examples(fmt, v, tok, turns, text_docs=(), seed=0, draws=4):
    """One format's training sequences (ids, n_prompt), as groups that batches draw from in equal shares:
      chain          SpeechGPT's chain of modality, one per exchange
      speech         the speech dialogue: question units -> answer units
      speech_words   the speech dialogue, the answer's words interleaved with their units
      pretrain       Spirit-LM's pre-training: every turn interleaved (`draws` random switch
                     patterns each: more variety from few turns), every turn as speech only, and
                     the text documents (turns lists)"""
    pairs = exchanges(turns)
    words = lambda t: [tok.encode(w) for w in t["words"]]
    if fmt == "chain":
        return [[dialogue(v, q["units"], chain_reply(v, tok.encode(q["text"]), tok.encode(a["text"]), a["units"]))
                 for q, a in pairs]]
    if fmt == "speech":
        return [[dialogue(v, q["units"], speech_reply(v, a["units"])) for q, a in pairs]]
    if fmt == "speech_words":
        return [[dialogue(v, q["units"], words_reply(v, words(a), a["word_units"])) for q, a in pairs]]
    if fmt == "pretrain":
        rng = random.Random(seed)
        return [[(interleaved(v, words(t), t["word_units"], rng), 0) for t in turns for _ in range(draws)],
                [(speech_only(v, t["units"]), 0) for t in turns],
                [(tok.encode_turns(doc), 0) for doc in text_docs]]
    raise ValueError(f"unknown flat format {fmt!r} (chain, speech, speech_words, pretrain)")


def get_batch(groups, batch_size, gen, device):
    """Each row a random group, then a random sequence of it, right-padded (a causal LM never sees
    the padding after a position). x [B, T]; y [B, T] the next ids, IGNORE on padding and inside
    the prompt."""
    rows = []
    for _ in range(batch_size):
        group = groups[int(torch.randint(len(groups), (1,), generator=gen))]
        rows.append(group[int(torch.randint(len(group), (1,), generator=gen))])
    T = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((batch_size, T), PAD, dtype=torch.long)
    y = torch.full((batch_size, T), IGNORE, dtype=torch.long)
    for r, (ids, n_prompt) in enumerate(rows):
        x[r, :len(ids) - 1] = torch.tensor(ids[:-1])
        y[r, :len(ids) - 1] = torch.tensor(ids[1:])
        y[r, :max(0, n_prompt - 1)] = IGNORE      # position p predicts id p + 1: the reply starts at n_prompt
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, groups, batch_size, n_batches, device, seed=0):
    """Mean loss on n_batches fixed batches (the same ones every time: comparable numbers)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n_batches):
        x, y = get_batch(groups, batch_size, gen, device)
        with utils.autocast(device):
            losses.append(model(x, y)[1].item())
    model.train()
    return sum(losses) / len(losses)


# -----------------------------------------------------------------------------
# training

def load_examples(cfg, fmt, v, tok, units, split):
    """A split's sequences of one format, those longer than the model's block left out (and counted)."""
    docs = []
    if fmt == "pretrain":
        docs = [d["turns"] for d in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], f"text_{split}.jsonl"))]
    groups = build_examples(fmt, v, tok, spoken_turns(cfg, units, split), docs, cfg["seed"])
    kept = [[ex for ex in g if len(ex[0]) <= cfg["flat_block_size"] + 1] for g in groups]
    dropped = sum(map(len, groups)) - sum(map(len, kept))
    if dropped:
        print(f"flat {fmt} {split}: {dropped} sequences longer than flat_block_size={cfg['flat_block_size']} left out")
    return kept


def train(cfg, fmt, init="text.pt", name=None, stop_step=None):
    """Train the flat LM on one format (build_examples) from `init` under out_dir: the text LM
    (grown), or a flat checkpoint (Spirit-LM's fine-tune continues its pre-training). Writes
    out_dir/<name>.pt (default flat_<fmt>); a finished checkpoint of the same settings is kept and
    its figures returned. stop_step stops the loop there as if the run were killed."""
    device, out_dir = cfg["device"], cfg["out_dir"]
    name = name or f"flat_{fmt}"
    path = os.path.join(out_dir, f"{name}.pt")
    settings = dict(utils.run_settings(cfg, "flat"), flat_format=fmt, flat_from=init)
    if os.path.exists(path):
        done = utils.load_checkpoint(path)
        if done.get("finished") and done.get("settings") == settings:
            print(f"{path} is finished with these settings: not trained again")
            return done["metrics"]
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    units = Units.load(os.path.join(out_dir, "units.pt"), device)
    torch.manual_seed(cfg["seed"])
    model, v = start_model(os.path.join(out_dir, init), units.k, cfg["flat_block_size"], cfg["flat_init"], cfg["seed"])
    model = model.to(device).train()
    train_groups, val_groups = (load_examples(cfg, fmt, v, tok, units, s) for s in ("train", "val"))
    B, max_steps = cfg["flat_batch_size"], cfg["flat_max_steps"]
    print(f"flat {name}: {count_params(model) / 1e6:.3f}M parameters, vocabulary {v.n_text} text + {v.n_units} units "
          f"+ {len(MARKERS)} markers; {' + '.join(str(len(g)) for g in train_groups)} training sequences")

    # as in the text LM, the tables learn faster: the unit and marker rows start from nothing
    tables = [model.embed.weight, model.head.weight]
    opt = torch.optim.AdamW([dict(params=list(model.transformer.parameters()), lr_mult=1.0),
                             dict(params=tables, lr_mult=cfg["flat_embed_lr_mult"])],
                            lr=cfg["flat_lr"], betas=(0.9, 0.95), weight_decay=cfg["flat_weight_decay"])
    ckpt = utils.resume(path, model, opt, device, max_steps, settings=settings)
    step, history = (ckpt["step"], ckpt["history"]) if ckpt else (0, {"train": [], "val": [], "targets": 0})

    def save(**extra):
        utils.save_checkpoint(path, dict(model=model.state_dict(), optimizer=opt.state_dict(), config=model.config,
                                         vocab=dict(n_text=v.n_text, n_units=v.n_units), settings=settings,
                                         step=step, history=history, **extra))

    gen = torch.Generator()
    t0 = time.time()
    pbar = tqdm(total=max_steps, initial=step, desc=name, dynamic_ncols=True)
    while step < max_steps:
        if stop_step is not None and step >= stop_step:
            break
        lr = utils.cosine_lr(step, max_steps, cfg["flat_lr"], cfg["flat_warmup"])
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        gen.manual_seed(cfg["seed"] * 1_000_003 + step)   # batches depend on the step only: resumable
        x, y = get_batch(train_groups, B, gen, device)
        with utils.autocast(device):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["flat_grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        history["targets"] += int((y != IGNORE).sum())    # the reply ids scored: the budget in tokens
        history["train"].append([step, round(loss.item(), 4)])
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
        if step % cfg["flat_eval_interval"] == 0 or step == max_steps:
            history["val"].append([step, round(estimate_loss(model, val_groups, B, cfg["flat_eval_batches"], device), 4)])
            pbar.write(f"{name} step {step}: train loss {loss.item():.4f}, val loss {history['val'][-1][1]:.4f}")
        if step % cfg["flat_ckpt_interval"] == 0 and step < max_steps:
            save()
    pbar.close()
    if step < max_steps:            # stopped as if killed: nothing saved since the last checkpoint
        return {}
    metrics = {f"{name}_train_loss": history["train"][-1][1], f"{name}_val_loss": history["val"][-1][1],
               f"{name}_params": count_params(model), f"{name}_train_seconds": round(time.time() - t0, 1),
               f"{name}_target_tokens": history["targets"]}
    save(finished=True, metrics=metrics)
    return metrics


def train_rows(cfg):
    """The flat rows of the paradigm table, each flat_max_steps optimizer steps of flat_batch_size
    sequences from the same text LM (the same budget in steps; a chain-of-modality sequence is
    longer, so it sees more ids):
      flat_chain        chain of modality (SpeechGPT)
      flat_spirit       Spirit-LM: pre-training (flat_pretrain_frac of the steps), then the speech dialogue
      flat_spirit_words the same pre-training, then the speech dialogue with the answer's words
      flat_s2s          speech to speech: the speech dialogue only, no text after the text LM"""
    steps = cfg["flat_max_steps"]
    pre = int(round(steps * cfg["flat_pretrain_frac"]))
    metrics = dict(train(cfg, "chain"))
    metrics.update(train(dict(cfg, flat_max_steps=pre), "pretrain"))
    for fmt, name in (("speech", "flat_spirit"), ("speech_words", "flat_spirit_words")):
        metrics.update(train(dict(cfg, flat_max_steps=steps - pre), fmt, init="flat_pretrain.pt", name=name))
    metrics.update(train(cfg, "speech", name="flat_s2s"))
    return metrics
