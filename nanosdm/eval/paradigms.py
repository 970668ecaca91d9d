"""
The paradigm table's figures, one row at a time: the survey's ways of teaching a text LM to listen
and speak (Moshi's dual stream with its inner monologue, Mini-Omni's parallel heads, speech to speech
without text, and the flat formats of flat.py), measured on the same unseen-voice questions. Like the
other evaluations it loads what it scores, and no component imports it. Keys paradigm_<name>_<figure>:

    qa_text             the answer word is in the text the row writes (rows that write text)
    qa_speech           the fact-free judge (judge.py) hears the answer in the row's audio
    qa_questions        how many questions
    steps_per_s         LM steps per second of reply audio: 12.5 for the 80 ms dual stream, tokens
                        written per second of vocoded reply for a flat row
    batch_per_reply     sequences run per reply: 2 with Mini-Omni's batch parallel decoding
    first_audio_steps   from the format: LM steps from the question's end to the first audio token
                        (the dual stream: one step plus the delays; a flat row: its reply's ids up
                        to and with its first unit, the mean over the questions)
    first_audio_ms      the same in ms where a step is a fixed time (the dual stream's 80 ms)
    first_audio_measured_ms   measured at batch 1 on this machine (live_first_audio, flat_first_audio):
                        the median ms from a question's end to the first voiced 20 ms of the reply
                        leaving the row, its compute included; first_audio_silent: the share of the
                        timed questions it never voiced a reply to
    params              parameters (utils.count_params; text_out: its LM and adapter; cascade: its text LM)
    qa_text_only        the answer word in the row's text on the text_only split: facts the
                        rows never heard spoken, only read in the text LM's corpus (rows that write text)
    retention           the text LM's QA asked of the row's model in text / asked of the text LM
    full_duplex         1 if the row listens while it speaks (the dual-stream rows), else 0
    ear_name_acc, qa_text_heard(_facts), voice_acc, judge_acc_window
                        the row taken apart as stage sft is (eval/dialogue.taken_apart; rows with text
                        only): its transcript names the creature, the answer with the question's words
                        written for it, the judge on its voice with the reply's words written for it;
                        judge_acc_window: the judge on the corpus's own replies through the row's mouth
                        (the codec's codes for the dual rows; the unit vocoder for the flat rows)
    train_seconds, train_tokens, train_loss   from the training (nanosdm/paradigms.py): the loop's wall
                        time (data preparation apart), the positions the loss scored, the last loss

Stage `paradigms` (evaluate) measures every row of nanosdm/paradigms.py: dual_row and flat_row take a
loaded model and the questions; the evaluate_* functions load a row and what it hears and speaks through.
"""
import os
import time

import numpy as np
import torch

from nanosdm import dualstream, flat, paradigms, textlm, utils
from nanosdm.codec import FRAME, FRAME_S
from nanosdm.corpus.audio import SAMPLE_RATE
from nanosdm.corpus import spokenworld
from nanosdm.corpus.speech import Streams
from nanosdm.eval.dialogue import taken_apart
from nanosdm.judge import VAD_WIN, VOICED_RMS, judge_wavs
from nanosdm.live import (ANSWER_WINDOW_S, AUDIO_TEMP, AUDIO_TOP_K, free_run, load_ear, monologue_parts, qa_batch,
                          questions, reply_clips, silence_codes, user_silence)
from nanosdm.tokenizer import PAD

SPLIT = "unseen_voice"      # the table's questions: voices the rows never heard in training


def _mean(xs):
    return round(float(np.mean(xs)), 4) if len(xs) else -1


# -----------------------------------------------------------------------------
# first audio, measured: each row as it would run live, at batch 1, on this machine

TIMED = 12        # questions timed per row
TIMED_HISTORY = 40   # frames of the dialogue before each (3.2 s: enough context, and each costs a live step)
LISTEN_S = 3.0    # seconds a row may take to start its reply


def first_voiced(wav, after=0):
    """The sample where wav's first voiced 20 ms window at or after sample `after` starts, or None."""
    n = (len(wav) - after) // VAD_WIN
    if n <= 0:
        return None
    rms = wav[after:after + n * VAD_WIN].reshape(n, VAD_WIN).pow(2).mean(1).sqrt()
    loud = (rms > VOICED_RMS).nonzero()
    return after + int(loud[0]) * VAD_WIN if len(loud) else None


def _timed_figures(name, ms, n):
    key = lambda figure: f"paradigm_{name}_{figure}"
    return {key("first_audio_measured_ms"): round(float(np.median(ms))) if ms else -1,
            key("first_audio_silent"): round(1 - len(ms) / max(n, 1), 4)}


@torch.no_grad()
def live_first_audio(name, model, codec, ear, cfg, history, parallel_decoding=False, n=TIMED):
    """A dual-stream row in the live loop (live.LiveSession, batch 1): the dialogue's `history` frames
    before each question scripted (its own channel as recorded, as the evaluation forces it), the
    user's voice through the question's end, then silence. The input of step t has arrived at
    (t + 1) x 80 ms; the step starts then, or when the step before it is done, and takes the time it
    took here. The reply is heard from the end of the step that emitted its first voiced window."""
    from nanosdm.live import LiveSession
    streams = Streams(os.path.join(cfg["out_dir"], "speech"), SPLIT)
    sp = spokenworld.SpeechSplit(cfg["data_dir"], SPLIT)
    K, D, ms = model.n_q, max(model.delays), []
    items = questions(streams)[:n]
    for i, tr, _ in items:
        wav, _ = sp.dialogue(i)
        x, _ = streams.dialogue(i)
        s, e = int(tr["start"] / FRAME_S), int(np.ceil(tr["end"] / FRAME_S))
        h0 = max(0, s - history)
        user = torch.cat([wav[spokenworld.USER, h0 * FRAME:e * FRAME], torch.zeros(int(LISTEN_S * SAMPLE_RATE))])
        user = torch.nn.functional.pad(user, (0, -len(user) % FRAME))
        script = torch.from_numpy(x[h0:s])
        session = LiveSession(model, codec, script[:, 0] if model.text else None, script[:, 1:1 + K], ear=ear,
                              parallel_decoding=parallel_decoding)
        if not model.text:   # a row without text is scripted on its codes alone
            session.script_text, session.n_script = torch.full((s - h0,), -1), s - h0
        q_end, done = tr["end"] - h0 * FRAME_S, 0.0     # seconds on the live clock
        for t in range(len(user) // FRAME):
            tick = time.perf_counter()
            out = session.step(user[t * FRAME:(t + 1) * FRAME])
            done = max(done, (t + 1) * FRAME_S) + time.perf_counter() - tick
            if out["wav"] is None or (out["frame"] + 1) * FRAME_S <= q_end:
                continue
            at = max(0, int(round((q_end - out["frame"] * FRAME_S) * SAMPLE_RATE)))
            v = first_voiced(out["wav"], min(at, FRAME))
            if v is not None:
                ms.append(1000 * (done + v / SAMPLE_RATE - q_end))
                break
    return _timed_figures(name, ms, len(items))


@torch.no_grad()
def flat_first_audio(name, model, v, voc, codec, items, start, n=TIMED):
    """A flat row at batch 1: at the question's end its units are in hand (the causal units keep up
    with the voice); the LM reads the prompt and writes its reply (flat.stream), each unit goes to
    the vocoder as it comes (Vocoder.stream), until the vocoder gives a voiced window."""
    ms = []
    for it in items[:n]:
        prompt = flat.dialogue_prompt(v, it["question_units"]) + list(start)
        tick, state, heard = time.perf_counter(), voc.new_state(codec), 0
        for i, _ in flat.stream(model, v, prompt, MAX_REPLY):
            if not v.is_unit(i):
                continue
            wav, state = voc.stream(torch.tensor([i - v.n_text]), state, codec)
            f = first_voiced(wav.cpu()) if len(wav) else None
            if f is not None:
                ms.append(1000 * (time.perf_counter() - tick + (heard + f) / SAMPLE_RATE))
                break
            heard += len(wav)
    return _timed_figures(name, ms, min(n, len(items)))


@torch.no_grad()
def dual_row(name, model, codec, tok, streams, history, judge=None, parallel_decoding=False, ear=None, seed=0, names=None):
    """A dual-stream row (any of its variants) on every question of `streams`, as evaluate_sft asks
    them: `history` steps of the dialogue before the question teacher-forced, then the question heard
    and ANSWER_WINDOW_S of free running, greedy text, audio as live.py samples it. judge: the ASR
    that judges speech. names (the world's creatures): a row with text and a judge is also taken
    apart as stage sft is (eval/dialogue.taken_apart: ear, brain, voice)."""
    device = next(model.parameters()).device
    quiet, silence = silence_codes(codec), user_silence(codec, ear)
    pad_col = np.concatenate([[PAD], quiet.numpy(), silence.numpy()])
    items = questions(streams)
    hist, user, starts, ends = qa_batch(streams, items, history, silence, pad_col)
    q_frames = [e - s for s, e in zip(starts, ends)]
    window = [q + int(ANSWER_WINDOW_S / FRAME_S) for q in q_frames]
    qs, answers = [tr["text"] for _, tr, _ in items], [tr["answer"] for _, tr, _ in items]
    run = lambda h, u, force=None: free_run(model, h.to(device), u.to(device), silence.to(device),
                                            (0, 0, AUDIO_TEMP, AUDIO_TOP_K), force_text=force, parallel_decoding=parallel_decoding)
    torch.manual_seed(seed)
    text, codes = run(hist, user)
    D = max(model.delays)
    key = lambda figure: f"paradigm_{name}_{figure}"
    figures = {key("qa_questions"): len(items), key("steps_per_s"): round(1 / FRAME_S, 2),
               key("batch_per_reply"): 2 if parallel_decoding else 1, key("first_audio_steps"): 1 + D,
               key("first_audio_ms"): round(1000 * FRAME_S * (1 + D)), key("params"): utils.count_params(model)}
    if text is not None:      # the answer in the inner monologue written after the question
        said = [tok.decode(monologue_parts(text[n, :window[n]].tolist())[1]) for n in range(len(items))]
        figures[key("qa_text")] = _mean([textlm.answer_in(s, a) for s, a in zip(said, answers)])
    if judge is not None:
        wavs = codec.decode(codes.transpose(1, 2).to(device)).cpu()
        ok, _ = judge_wavs(judge, reply_clips(wavs, q_frames, window), qs, answers)
        figures[key("qa_speech")] = _mean(ok)
    if text is not None and judge is not None and names is not None:
        parts = taken_apart(run, text, codec, judge, tok, streams, items, (hist, user, starts, q_frames, window),
                            quiet, names, seed)
        figures.update({key(k): v for k, v in parts.items()})
    return figures


@torch.no_grad()
def flat_row(name, model, v, tok, items, speak=None, judge=None, start=(), max_new_tokens=300):
    """A flat row (flat.py) on items [dict(question_units, question, answer)]: greedy replies, the
    answer text where the format writes one, and with speak (answer unit ids -> 16 kHz wav, e.g. the
    unit vocoder) and judge, the spoken answer judged and the steps per second of reply audio."""
    replies = [flat.respond(model, v, it["question_units"], start=start, max_new_tokens=max_new_tokens)
               for it in items]
    key = lambda figure: f"paradigm_{name}_{figure}"
    firsts = [next((n + 1 for n, i in enumerate(r["reply"]) if v.is_unit(i)), None) for r in replies]
    figures = {key("qa_questions"): len(items), key("batch_per_reply"): 1, key("params"): utils.count_params(model),
               key("first_audio_steps"): _mean([f for f in firsts if f is not None])}
    if any(r["answer"] for r in replies):      # a format that writes its answer in text
        figures[key("qa_text")] = _mean([textlm.answer_in(tok.decode(r["answer"]), it["answer"])
                                         for r, it in zip(replies, items)])
    if speak is not None:
        wavs = [speak(r["answer_units"]) if r["answer_units"] else torch.zeros(0) for r in replies]
        seconds = sum(len(w) for w in wavs) / SAMPLE_RATE
        figures[key("steps_per_s")] = round(sum(len(r["reply"]) for r in replies) / seconds, 2) if seconds else -1
        if judge is not None:
            ok, _ = judge_wavs(judge, wavs, [it["question"] for it in items], [it["answer"] for it in items])
            figures[key("qa_speech")] = _mean(ok)
    return figures


def chain_taken_apart(name, model, v, tok, items, speak, judge, names, max_new_tokens=300):
    """The chain of modality (flat_chain) taken apart as stage sft is: its own transcript names the
    creature (ear); the answer when the question's words are written for it (brain); the judge on
    its units when the reply's words are written for it (voice). items need "reply" for the voice."""
    from nanosdm.eval.dialogue import question_name
    key = lambda figure: f"paradigm_{name}_{figure}"
    clean = lambda text: text.replace("?", " ").replace(".", " ").split()
    named = [it for it in items if question_name(it["question"], names)]
    heard = [flat.respond(model, v, it["question_units"], start=[v.text], max_new_tokens=max_new_tokens) for it in named]
    figures = {key("ear_name_acc"): _mean([question_name(it["question"], names) in clean(tok.decode(r["transcript"]))
                                           for it, r in zip(named, heard)])}
    given_q = [flat.respond(model, v, it["question_units"], start=[v.text] + tok.encode(it["question"]) + [v.answer],
                            max_new_tokens=max_new_tokens) for it in items]
    figures[key("qa_text_heard")] = _mean([textlm.answer_in(tok.decode(r["answer"]), it["answer"]) for r, it in zip(given_q, items)])
    spoken = [it for it in items if it.get("reply")]
    given_a = [flat.respond(model, v, it["question_units"], max_new_tokens=max_new_tokens,
                            start=[v.text] + tok.encode(it["question"]) + [v.answer] + tok.encode(it["reply"]) + [v.speech])
               for it in spoken]
    wavs = [speak(r["answer_units"]) if r["answer_units"] else torch.zeros(0) for r in given_a]
    ok, _ = judge_wavs(judge, wavs, [it["question"] for it in spoken], [it["answer"] for it in spoken])
    figures[key("voice_acc")] = _mean(ok)
    return figures


def evaluate_dual_row(cfg, name, path, parallel_decoding=False, text_only=False):
    """One dual-stream row from its checkpoint, hearing and speaking through the run's codec (and
    ear), judged by its ASR. text_only: also the text_only split's questions in text, and the
    text LM's QA in text (retention), for a row that writes text."""
    from nanosdm.asr import ASR
    from nanosdm.codec import Codec
    from nanosdm.eval.dialogue import retention
    from nanosdm.tokenizer import Tokenizer
    device, out_dir = cfg["device"], cfg["out_dir"]
    model = dualstream.load_model(path, device)
    codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
    ear = load_ear(model, out_dir, device)
    names = {e["name"] for e in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl"))}
    run = lambda split, judge: dual_row(name, model, codec, tok, Streams(os.path.join(out_dir, "speech"), split),
                                        cfg["sft_eval_history"], judge, parallel_decoding, ear, cfg["seed"], names)
    figures = dict(run(SPLIT, asr), **{f"paradigm_{name}_full_duplex": 1})
    figures.update(live_first_audio(name, model, codec, ear, cfg, TIMED_HISTORY, parallel_decoding))
    if text_only and model.text:
        figures[f"paradigm_{name}_qa_text_only"] = run(TEXT_ONLY, None)[f"paradigm_{name}_qa_text"]
        lm = textlm.load_model(os.path.join(out_dir, "text.pt"), device)
        figures[f"paradigm_{name}_retention"] = retention(model, lm, tok, cfg)["sft_text_retention"]
    return figures


# -----------------------------------------------------------------------------
# the stage: every row on the same questions

TEXT_ONLY = "text_only"     # questions on the facts the rows only read (the text LM's corpus)
MAX_REPLY = 300             # ids a flat row may write after a question (a reply of 4 s is about 200 units)


def text_part(model, v):
    """The flat LM's text alone: a TextLM over the text ids, the same blocks (its text in, its text out)."""
    lm = textlm.TextLM(**dict(model.config, vocab_size=v.n_text)).to(model.embed.weight.device)
    lm.transformer.load_state_dict(model.transformer.state_dict())
    with torch.no_grad():
        lm.embed.weight.copy_(model.embed.weight[:v.n_text])
        lm.head.weight.copy_(model.head.weight[:v.n_text])
    return lm.eval()


def seen_qa(lm, tok, cfg):
    """The text LM's held-out QA on seen facts, asked of lm in text."""
    items = spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "qa_eval.jsonl"))
    return textlm.qa_metrics(items, textlm.answer_questions(lm, tok, items, cfg["device"]))["text_qa_acc_seen"]


def flat_items(cfg, units, split):
    """A split's spoken questions (with an answer word) for the flat rows: the question's units, alone,
    the words of the reply that answers it (None where it was interrupted) and the reply's units as
    recorded (None where no answer followed)."""
    turns = flat.spoken_turns(cfg, units, split)
    replies = {id(q): a["text"] for q, a in flat.exchanges(turns)}
    said = {id(q): a["units"] for q, a in zip(turns, turns[1:])      # interrupted replies too, as recorded
            if a["kind"] == "answer" and a["dialogue"] == q["dialogue"]}
    return [dict(question_units=t["units"], question=t["text"], answer=t["answer"], reply=replies.get(id(t)),
                 reply_units=said.get(id(t))) for t in turns if t["kind"] == "question" and t.get("answer")]


def vocoder_ceiling(items, speak, judge):
    """What the judge can hear at all through the flat rows' mouth: the corpus's own replies (their
    recorded units, interrupted ones as they were cut) through the unit vocoder, judged as a row's
    reply is: the dual rows' judge_acc_window, for units."""
    spoken = [it for it in items if it["reply_units"]]
    ok, _ = judge_wavs(judge, [speak(it["reply_units"]) for it in spoken],
                       [it["question"] for it in spoken], [it["answer"] for it in spoken])
    return _mean(ok)


def evaluate_flat_rows(cfg, rows=paradigms.FLAT_ROWS):
    """The flat rows: the question's units alone (no dialogue before it), the reply opened with its
    format's first marker, speech through the unit vocoder, judged."""
    from nanosdm.asr import ASR
    from nanosdm.codec import Codec
    from nanosdm.tokenizer import Tokenizer
    from nanosdm.units import Units
    from nanosdm.vocoder import Vocoder
    device, out_dir = cfg["device"], cfg["out_dir"]
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    units = Units.load(os.path.join(out_dir, "units.pt"), device)
    asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
    codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
    voc = Vocoder.load(os.path.join(out_dir, "vocoder.pt"), device)
    speak = lambda u: voc.synthesize(torch.tensor(u, dtype=torch.long, device=device), codec).cpu()
    base = seen_qa(textlm.load_model(os.path.join(out_dir, "text.pt"), device), tok, cfg)   # retention's 100%
    items, text_only = flat_items(cfg, units, SPLIT), flat_items(cfg, units, TEXT_ONLY)
    names = {e["name"] for e in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl"))}
    ceiling = vocoder_ceiling(items, speak, asr)
    figures = {}
    for name in rows:
        figures[f"paradigm_{name}_judge_acc_window"] = ceiling
        model, v = flat.load_model(os.path.join(out_dir, f"{name}.pt"), device)
        start = {"flat_chain": [v.text], "flat_spirit_words": [v.answer]}.get(name, [v.speech])
        figures.update(flat_row(name, model, v, tok, items, speak, asr, start, MAX_REPLY))
        figures.update(flat_first_audio(name, model, v, voc, codec, items, start))
        figures[f"paradigm_{name}_full_duplex"] = 0
        figures[f"paradigm_{name}_retention"] = round(seen_qa(text_part(model, v), tok, cfg) / max(base, 1e-9), 4)
        if name == "flat_chain":                             # the format that writes the question's words
            figures.update(chain_taken_apart(name, model, v, tok, items, speak, asr, names, MAX_REPLY))
        if name in ("flat_chain", "flat_spirit_words"):      # the formats that write their answer in text
            figures[f"paradigm_{name}_qa_text_only"] = flat_row(name, model, v, tok, text_only, None, None, start,
                                                                MAX_REPLY).get(f"paradigm_{name}_qa_text", 0.0)
    return figures


def espeak_voice(text):
    """The corpus's own TTS in the assistant's voice (16 kHz), silence for nothing to say."""
    from nanosdm.corpus import espeak
    try:
        wav, _, _ = espeak.synthesize(text, **spokenworld.ASSISTANT_VOICE)
    except ValueError:          # no word in the text
        return torch.zeros(0)
    return torch.from_numpy(0.6 * wav / max(1e-4, float(np.abs(wav).max()))).float()


def evaluate_text_out(cfg):
    """text_out: the adapter's text answer to each spoken question (in its dialogue, as omni hears
    it), spoken by eSpeak, judged. first_audio_ms: measured at batch 1 from the question's end
    (the ear, the whole answer, eSpeak's whole reply: an external TTS speaks a finished text)."""
    from nanosdm import omni, omni_data
    from nanosdm.asr import ASR
    from nanosdm.tokenizer import Tokenizer
    device, out_dir = cfg["device"], cfg["out_dir"]
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
    model = paradigms.load_text_out(os.path.join(out_dir, "paradigm_text_out.pt"), device)
    k, block, key = model.config["k"], model.lm.config["block_size"], lambda f: f"paradigm_text_out_{f}"
    figures = {key("params"): paradigms.text_out_params(model), key("batch_per_reply"): 1, key("full_duplex"): 0}
    for split in (SPLIT, TEXT_ONLY):
        sp = spokenworld.SpeechSplit(cfg["data_dir"], split)
        items = [it for it in omni_data.spoken_exchanges(cfg, split, asr, tok, complete_only=False) if it["turn"].get("answer")]
        said, wavs, ms, n_tokens = [], [], [], []
        for it in items:
            wav, _ = sp.dialogue(it["dialogue"])
            t0 = time.time()
            heard = omni_data.encode_speech(asr, [omni_data.user_audio(wav, it["turn"])])[0]
            out = omni.respond(model, omni_data.make_example(dict(it, question=heard), k, block, with_answer=False), None, None, 1)
            said.append(tok.decode(out["tokens"]))
            n_tokens.append(len(out["tokens"]) + 1)       # and its EOS: the text is finished
            if split == SPLIT:
                wavs.append(espeak_voice(said[-1]))
                ms.append(1000 * (time.time() - t0))
        ok = _mean([textlm.answer_in(s, it["turn"]["answer"]) for s, it in zip(said, items)])
        if split == TEXT_ONLY:
            figures[key("qa_text_only")] = ok
            continue
        speech_ok, _ = judge_wavs(asr, wavs, [it["turn"]["text"] for it in items], [it["turn"]["answer"] for it in items])
        seconds = sum(len(w) for w in wavs) / SAMPLE_RATE
        figures.update({key("qa_text"): ok, key("qa_speech"): _mean(speech_ok), key("qa_questions"): len(items),
                        key("first_audio_steps"): _mean(n_tokens), key("first_audio_ms"): round(float(np.median(ms))),
                        key("first_audio_measured_ms"): round(float(np.median(ms))), key("first_audio_silent"): 0.0,
                        key("steps_per_s"): round(sum(n_tokens) / seconds, 2) if seconds else -1})
    base = seen_qa(textlm.load_model(os.path.join(out_dir, "text.pt"), device), tok, cfg)
    figures[key("retention")] = round(seen_qa(model.lm, tok, cfg) / max(base, 1e-9), 4)
    return figures


def evaluate_cascade(cfg):
    """The reference row: the ASR transcribes each question (and the dialogue's earlier ones), the
    text LM answers in text, eSpeak speaks it in the assistant's voice; judged like the others."""
    from nanosdm.asr import ASR
    from nanosdm.eval.dialogue import cascade_replies
    from nanosdm.live import questions
    from nanosdm.tokenizer import Tokenizer
    device, out_dir = cfg["device"], cfg["out_dir"]
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
    lm = textlm.load_model(os.path.join(out_dir, "text.pt"), device)
    key = lambda f: f"paradigm_cascade_{f}"
    figures = {key("params"): utils.count_params(lm), key("batch_per_reply"): 1, key("full_duplex"): 0, key("retention"): 1.0}
    for split in (SPLIT, TEXT_ONLY):
        streams = Streams(os.path.join(out_dir, "speech"), split)
        qa, replies = cascade_replies(asr, lm, tok, streams, questions(streams), cfg)
        ok = _mean([textlm.answer_in(r, it["answer"]) for r, it in zip(replies, qa)])
        if split == TEXT_ONLY:
            figures[key("qa_text_only")] = ok
            continue
        speech_ok, _ = judge_wavs(asr, [espeak_voice(r) for r in replies], [it["text"] for it in qa], [it["answer"] for it in qa])
        figures.update({key("qa_text"): ok, key("qa_speech"): _mean(speech_ok), key("qa_questions"): len(qa)})
    return figures


def evaluate(cfg):
    """Stage `paradigms`: the figures (paradigm_<name>_<figure>) of every row paradigms_rows names."""
    rows, figures = paradigms.rows(cfg), {}
    for name in rows:
        if name in paradigms.DUAL_ROWS:
            path = os.path.join(cfg["out_dir"], f"paradigm_{name}.pt")
            figures.update(evaluate_dual_row(cfg, name, path, parallel_decoding=name == "mini_omni", text_only=True))
        elif name == "text_out":
            figures.update(evaluate_text_out(cfg))
        elif name == "cascade":
            figures.update(evaluate_cascade(cfg))
    flat_rows = [name for name in rows if name in paradigms.FLAT_ROWS]
    if flat_rows:
        figures.update(evaluate_flat_rows(cfg, flat_rows))
    return figures
