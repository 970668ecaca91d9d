"""
The dual-stream model's figures: how well it hears (align), answers spoken questions in text and
in speech (sft), against a cascade, how much of the text LM it keeps, and how fast it answers.
Like metrics.py, it loads what it scores and no component imports it.

    align_user_wer        the model's own transcription (its text stream) of unseen-voice user turns
    align_ear_name_acc    the same transcripts: the share that name the creature asked about right
    *_ear_name_acc_turns  the same on 400 single questions in every held-out voice (unseen_turns; and *_user_wer_turns)
    judge_acc_*           the speech judge's ceiling: the corpus's own answers it scores correct
    sft_qa_text_<split>   the answer word is in the inner monologue written after the question
    sft_qa_speech_<split> the judge hears the right answer in the decoded audio
    cascade_qa_<split>    ASR (with its LM) -> text LM -> answer, on the same questions
    sft_text_retention    text-LM QA asked of the dual-stream model in text-only mode / the text LM's
    sft_onset_*_ms        median time from the end of the question to the first text token / voiced audio

Speech is scored by the fact-free judge of nanosdm/judge.py; the model runs through live.free_run.
"""
import json
import os
import random

import numpy as np
import torch

from nanosdm import textlm, utils
from nanosdm.codec import FRAME, FRAME_S
from nanosdm.corpus import realdata, spokenworld
from nanosdm.corpus.audio import SAMPLE_RATE
from nanosdm.corpus.speech import Streams, ear_codes, encode_channels
from nanosdm.dualstream import load_model
from nanosdm.eval import metrics
from nanosdm.judge import VAD_WIN, VOICED_RMS, judge_wavs
from nanosdm.live import (ANSWER_WINDOW_S, AUDIO_TEMP, AUDIO_TOP_K, free_run, monologue_parts, qa_batch, questions,
                          load_ear, reply_clips, silence_codes, user_silence)
from nanosdm.tokenizer import ASSISTANT, EOS, PAD, Tokenizer

QA_SPLITS = ("val", "unseen_voice", "text_only")


# -----------------------------------------------------------------------------
# the judge

# -----------------------------------------------------------------------------
# questions of a split, with the real dialogue around them

# -----------------------------------------------------------------------------
# stage `align`: does the model hear?

def evaluate_align(cfg):
    from nanosdm.codec import Codec
    device, out_dir = cfg["device"], cfg["out_dir"]
    model = load_model(os.path.join(out_dir, "align.pt"), device)
    codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    wer, examples = user_wer(model, codec, tok, cfg)
    print("align: the model's transcription of unseen-voice user turns, e.g.\n"
          + "\n".join(f"  ref {r!r}\n  hyp {h!r}" for r, h in examples[:4]))
    figures = {"align_user_wer": round(wer, 4), "align_ear_name_acc": name_acc(examples, cfg)}
    if realdata.is_default(cfg):
        figures.update(ear_figures("align", model, codec, tok, cfg))
    heldout = os.path.join(out_dir, "speech", "align_real_heldout_text.bin")
    if not realdata.is_default(cfg) and os.path.exists(heldout) and os.path.getsize(heldout):
        wer, examples = user_wer(model, codec, tok, cfg, split="align_real_heldout")   # the user's own speakers
        figures["align_user_wer_real"] = round(wer, 4)
        print(f"align: WER {wer:.2%} on held-out utterances of {cfg['speech_eval_data'] or cfg['speech_data']}, e.g. "
              f"ref {examples[0][0]!r} hyp {examples[0][1]!r}")
    return figures


def user_wer(model, codec, tok, cfg, split="unseen_voice", max_turns=160):
    """Word error rate of the model's own transcript of single user turns: each turn's user codes
    (from 0.3 s before it to 1 s after it) are heard from a conversation's start; the text stream
    runs freely (greedy) and its USER ... EOS words are the transcript."""
    streams = Streams(os.path.join(cfg["out_dir"], "speech"), split)
    silence = user_silence(codec, load_ear(model, cfg["out_dir"], cfg["device"])).to(cfg["device"])
    K = model.n_q
    refs, users = [], []
    for d in streams.dialogues:
        x = streams.window(d["offset"], d["frames"])
        for tr in d["turns"]:
            if tr["speaker"] == "user" and tr["kind"] == "question" and len(refs) < max_turns:
                s, e = int(tr["start"] / FRAME_S) - 4, int(tr["end"] / FRAME_S) + 13
                refs.append(tr["text"])
                users.append(torch.from_numpy(x[max(0, s):e, 1 + K:]))
    F = max(len(u) for u in users)
    user = torch.stack([torch.cat([u.to(silence.device), silence.expand(F - len(u), -1)]) for u in users])
    empty = torch.zeros(len(users), 0, 1 + 2 * K, dtype=torch.long)
    text, _ = free_run(model, empty.to(cfg["device"]), user.to(cfg["device"]), silence, (0, 0, 0, 0))
    hyps = [tok.decode(monologue_parts(row.tolist())[0]) for row in text]
    return metrics.wer(refs, hyps), list(zip(refs, hyps))


# -----------------------------------------------------------------------------
# the ear on many voices: single questions in every held-out voice

EAR_TURNS = 400        # binomial spread ~2 points; the unseen_voice split has ~80 named questions in 14 voices
EAR_TURNS_SEED = 5     # the same questions and voices for every run on one corpus


def unseen_turns(cfg, n=EAR_TURNS):
    """n single questions naming a creature (spoken facts, training phrasings), each in a random
    held-out voice, rate, pitch and level, as a dict of wavs, texts, names, voices. The unseen_voice
    split holds ~80 such questions in 16 dialogues: one voice the ear cannot hear (an echo variant)
    moves its figure by 7 points. Rendered once into out/<preset>/cache, because eSpeak does not render
    a text the same way twice (a few samples apart) and every later figure should hear the same audio."""
    path = os.path.join(cfg["out_dir"], "cache", f"unseen_turns_{n}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    from nanosdm.corpus import espeak
    rng = random.Random(EAR_TURNS_SEED)
    world = [e for e in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl")) if not e["text_only"]]
    with open(os.path.join(cfg["data_dir"], "corpus.json")) as f:
        voices = json.load(f)["unseen_voices"]
    turns, jobs, peaks = dict(wavs=[], texts=[], names=[], voices=[]), [], []
    for _ in range(n):
        ent = rng.choice(world)
        ex = spokenworld.fact_exchange(rng, ent, rng.choice(list(spokenworld.ATTRIBUTES)), held_out=False)
        jobs.append(dict(text=ex["question"], voice=rng.choice(voices), rate=rng.randint(140, 210), pitch=rng.randint(25, 75)))
        peaks.append(rng.uniform(0.25, 0.9))                   # the dialogues' user levels
        turns["texts"].append(ex["question"])
        turns["names"].append(ent["name"])
        turns["voices"].append(jobs[-1]["voice"])
    for (wav, _, _), peak in zip(espeak.synthesize_many(jobs, cfg.get("workers") or None), peaks):
        turns["wavs"].append(torch.from_numpy(wav * peak / max(1e-4, np.abs(wav).max())).float())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(turns, path + ".tmp")
    os.replace(path + ".tmp", path)
    return turns


def ear_on_turns(model, codec, tok, ear, turns, device):
    """The model's own transcript of each turn heard alone from a conversation's start (user_wer's
    protocol: 4 frames of silence before, 13 after; greedy text) -> (share naming the creature, WER,
    {voice variant: share}, transcripts)."""
    K = model.n_q
    silence = user_silence(codec, ear)
    users = []
    for w in turns["wavs"]:
        n = -(-len(w) // FRAME) + 4 + 13
        buf = torch.zeros(n * FRAME)
        buf[4 * FRAME:4 * FRAME + len(w)] = w
        cols = ear_codes(ear, buf, n, K) if ear is not None else encode_channels(codec, torch.stack([buf, buf]))[spokenworld.USER][:n]
        users.append(torch.from_numpy(cols.astype(np.int64)))
    F = max(len(u) for u in users)
    user = torch.stack([torch.cat([u, silence.expand(F - len(u), -1)]) for u in users])
    empty = torch.zeros(len(users), 0, 1 + 2 * K, dtype=torch.long)
    text, _ = free_run(model, empty.to(device), user.to(device), silence.to(device), (0, 0, 0, 0))
    hyps = [tok.decode(monologue_parts(row.tolist())[0]) for row in text]
    heard = [name in words_of(h) for name, h in zip(turns["names"], hyps)]
    per = {}
    for voice, ok in zip(turns["voices"], heard):
        per.setdefault(voice.split("+")[-1], []).append(ok)
    return float(np.mean(heard)), metrics.wer(turns["texts"], hyps), {v: float(np.mean(x)) for v, x in per.items()}, hyps


def ear_figures(stage, model, codec, tok, cfg):
    turns = unseen_turns(cfg)
    acc, wer, per, _ = ear_on_turns(model, codec, tok, load_ear(model, cfg["out_dir"], cfg["device"]), turns, cfg["device"])
    per = sorted(per.items(), key=lambda kv: kv[1])
    print(f"{stage}: names heard in {EAR_TURNS} single questions, every held-out voice: {acc:.1%} (WER {wer:.1%}); "
          f"by voice variant: " + ", ".join(f"{v} {a:.0%}" for v, a in per))
    counts = {v: sum(x.split("+")[-1] == v for x in turns["voices"]) for v, _ in per}
    fig, ax = utils.figure(1, 1, figsize=(8, 3))
    ax.bar(range(len(per)), [100 * a for _, a in per])
    ax.set_xticks(range(len(per)), [f"{v} ({counts[v]})" for v, _ in per], fontsize=7, rotation=30, ha="right")
    ax.axhline(100 * acc, color="k", lw=0.8, ls="--")
    ax.set_ylabel("names heard (%)")
    ax.set_title(f"{stage}: the creature's name in its own transcript, single questions, by held-out voice variant "
                 f"(questions); all: {acc:.1%}", fontsize=8)
    utils.save_figure(fig, os.path.join(cfg["out_dir"], "plots", f"{stage}_ear_by_voice.png"))
    return {f"{stage}_ear_name_acc_turns": round(acc, 4), f"{stage}_user_wer_turns": round(wer, 4)}


# -----------------------------------------------------------------------------
# stage `sft`: spoken QA, the judge, the cascade, text retention, response onset

def evaluate_sft(cfg):
    from nanosdm.asr import ASR
    from nanosdm.codec import Codec
    device, out_dir = cfg["device"], cfg["out_dir"]
    model = load_model(os.path.join(out_dir, "sft.pt"), device)
    codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
    asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    lm = textlm.load_model(os.path.join(out_dir, "text.pt"), device)
    figures = judge_ceiling(asr, codec, cfg)
    quiet = silence_codes(codec)                                    # the model's own channel, silent
    silence = user_silence(codec, load_ear(model, out_dir, device))  # the user's
    pad_col = np.concatenate([[PAD], quiet.numpy(), silence.numpy()])
    names = {e["name"] for e in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl"))}
    run = lambda hist, user, force=None: free_run(model, hist.to(device), user.to(device), silence.to(device),
                                                  (0, 0, AUDIO_TEMP, AUDIO_TOP_K), force_text=force)
    onsets_text, onsets_audio, gaps = [], [], []
    for split in QA_SPLITS:
        streams = Streams(os.path.join(out_dir, "speech"), split)
        items = questions(streams)
        hist, user, starts, ends = qa_batch(streams, items, cfg["sft_eval_history"], silence, pad_col)
        q_frames = [e - s for s, e in zip(starts, ends)]
        window = [q + int(ANSWER_WINDOW_S / FRAME_S) for q in q_frames]
        qs, ans = [tr["text"] for _, tr, _ in items], [tr["answer"] for _, tr, _ in items]
        # greedy text; audio as live.py samples it, from the same seed everywhere
        torch.manual_seed(cfg["seed"])
        text, codes = run(hist, user)
        wavs = codec.decode(codes.transpose(1, 2).to(device)).cpu()
        text_ok = []
        for n, (i, tr, reply) in enumerate(items):
            ids = text[n, :window[n]].tolist()
            text_ok.append(textlm.answer_in(tok.decode(monologue_parts(ids)[1]), tr["answer"]))
            q_end = tr["end"] - starts[n] * FRAME_S                  # seconds into the free run
            first = next((f for f, t in enumerate(ids) if t == ASSISTANT and f * FRAME_S >= q_end - FRAME_S), None)
            if first is not None:
                onsets_text.append(first * FRAME_S - q_end)
            voiced = voiced_onset(wavs[n, :window[n] * FRAME], q_end)
            if voiced is not None:
                onsets_audio.append(voiced)
            if reply is not None:
                gaps.append(reply["start"] - tr["end"])
        speech_ok, hyps = judge_wavs(asr, reply_clips(wavs, q_frames, window), qs, ans)
        figures[f"sft_qa_text_{split}"] = round(float(np.mean(text_ok)), 4)
        figures[f"sft_qa_speech_{split}"] = round(float(np.mean(speech_ok)), 4)
        figures[f"sft_qa_speech_given_text_{split}"] = round(float(np.mean([s for s, t in zip(speech_ok, text_ok) if t]))
                                                              if any(text_ok) else 0.0, 4)
        figures[f"sft_qa_questions_{split}"] = len(items)
        figures[f"cascade_qa_{split}"] = cascade(asr, lm, tok, streams, items, cfg)
        print(f"sft {split}: text {figures[f'sft_qa_text_{split}']:.1%}, speech {figures[f'sft_qa_speech_{split}']:.1%}, "
              f"cascade {figures[f'cascade_qa_{split}']:.1%} over {len(items)} questions; e.g. {qs[0]!r} -> "
              f"text {tok.decode(monologue_parts(text[0].tolist())[1])!r}, heard {hyps[0]!r}")
        # taken apart: the ear, the brain given the question's words, the voice given the answer's words
        # (text_only too: whether its facts are lost in hearing their creatures' names or in reaching them)
        parts = taken_apart(run, text, codec, asr, tok, streams, items, (hist, user, starts, q_frames, window),
                            quiet, names, cfg["seed"])
        figures.update({f"{'' if k.startswith('judge') else 'sft_'}{k}_{split}": v for k, v in parts.items()})
        named = [it for it in items if question_name(it[1]["text"], names)]
        figures[f"asr_name_acc_{split}"] = asr_name_acc(asr, cfg, split, named, names)
        print(f"sft {split} taken apart: ear (names heard) {figures[f'sft_ear_name_acc_{split}']:.1%}, "
              f"brain (question's words given) {figures[f'sft_qa_text_heard_{split}']:.1%} "
              f"(world facts {figures[f'sft_qa_text_heard_facts_{split}']:.1%}), voice (answer's words "
              f"given) {figures[f'sft_voice_acc_{split}']:.1%} of a {figures[f'judge_acc_window_{split}']:.1%} ceiling; "
              f"the recognizer names {figures[f'asr_name_acc_{split}']:.1%}")
    figures["judge_acc_window"] = figures["judge_acc_window_unseen_voice"]
    if realdata.is_default(cfg):
        figures.update(ear_figures("sft", model, codec, tok, cfg))
    figures.update(retention(model, lm, tok, cfg))
    figures["sft_onset_text_ms"] = round(1000 * float(np.median(onsets_text))) if onsets_text else -1
    figures["sft_onset_audio_ms"] = round(1000 * float(np.median(onsets_audio))) if onsets_audio else -1
    figures["sft_onset_corpus_ms"] = round(1000 * float(np.median(gaps)))
    figures["sft_theoretical_latency_ms"] = round(1000 * FRAME_S * (1 + max(model.delays)))
    if not realdata.is_default(cfg):
        figures.update(evaluate_sft_real(cfg, model, codec, tok))
    return figures


def taken_apart(run, text, codec, asr, tok, streams, items, qa, quiet, names, seed):
    """Where a dual-stream model loses a spoken question's answer, on the questions of qa_batch
    (qa = hist, user, starts, q_frames, window) and its free run's text [B, F]; run(hist, user,
    force_text) runs it again with text written for it (live.free_run):
        ear_name_acc          its own transcript names the creature asked about
        qa_text_heard         the answer in its monologue when the question's words are written for it
        qa_text_heard_facts   the same, on the questions that name a creature (the world's facts)
        voice_acc             the judge hears the answer when the recording's text is written for it
        judge_acc_window      the judge on the corpus's own codes in the same windows (voice's ceiling)"""
    hist, user, starts, q_frames, window = qa
    device = next(iter(codec.parameters())).device
    qs, ans = [tr["text"] for _, tr, _ in items], [tr["answer"] for _, tr, _ in items]
    rec_text, rec_codes = recorded_window(streams, items, starts, user.shape[1], quiet)
    out = {}
    ok, _ = judge_wavs(asr, reply_clips(codec.decode(rec_codes.transpose(1, 2).to(device)).cpu(), q_frames, window), qs, ans)
    out["judge_acc_window"] = round(float(np.mean(ok)), 4)
    heard = [tok.decode(monologue_parts(text[n, :window[n]].tolist())[0]) for n in range(len(items))]
    named = [n for n, q in enumerate(qs) if question_name(q, names)]
    out["ear_name_acc"] = round(float(np.mean(
        [question_name(qs[n], names) in words_of(heard[n]) for n in named])), 4) if named else -1
    torch.manual_seed(seed)
    text_h, _ = run(hist, user, force_question(rec_text, q_frames))
    heard_ok = [textlm.answer_in(tok.decode(monologue_parts(text_h[n, :window[n]].tolist())[1]), a) for n, a in enumerate(ans)]
    out["qa_text_heard"] = round(float(np.mean(heard_ok)), 4)
    # the world's facts alone (the questions that name a creature): the text LM answers all of them
    # (text_qa_acc_seen), while its arithmetic and the history's "my name is ..." are harder for it
    out["qa_text_heard_facts"] = round(float(np.mean([heard_ok[n] for n in named])), 4) if named else -1
    torch.manual_seed(seed)
    _, codes_v = run(hist, user, rec_text)
    ok, _ = judge_wavs(asr, reply_clips(codec.decode(codes_v.transpose(1, 2).to(device)).cpu(), q_frames, window), qs, ans)
    out["voice_acc"] = round(float(np.mean(ok)), 4)
    return out


def recorded_window(streams, items, starts, n_frames, silence):
    """What the recording holds over the evaluation's window of each question: its text stream
    [B, F] (PAD past the dialogue's end) and the assistant's codes [B, F, K] (silence past it)."""
    K = streams.assistant.shape[1]
    text = np.full((len(items), n_frames), PAD, dtype=np.int64)
    codes = np.repeat(np.repeat(silence[None, None].numpy(), n_frames, 1), len(items), 0)
    for n, ((i, _, _), s) in enumerate(zip(items, starts)):
        d = streams.dialogues[i]
        x = streams.window(d["offset"], d["frames"])[s:s + n_frames]
        text[n, :len(x)] = x[:, 0]
        codes[n, :len(x)] = x[:, 1:1 + K]
    return torch.from_numpy(text), torch.from_numpy(codes)


def force_question(rec_text, q_frames):
    """The recorded text stream forced while the question plays, up to the user's EOS (written a
    frame or two after the voice stops) and never into the reply (-1: the model writes)."""
    force = torch.full_like(rec_text, -1)
    for n, q in enumerate(q_frames):
        row = rec_text[n].tolist()
        stop = next((f for f in range(max(0, q - 2), len(row)) if row[f] in (EOS, ASSISTANT)), q)
        stop = stop + 1 if row[stop] == EOS else stop
        force[n, :stop] = rec_text[n, :stop]
    return force


def name_acc(pairs, cfg):
    """Of the (reference, transcript) pairs whose reference names a creature: the share whose
    transcript has that name (the ear's figure; -1 when no reference names one)."""
    names = {e["name"] for e in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl"))}
    named = [(question_name(r, names), h) for r, h in pairs if question_name(r, names)]
    return round(float(np.mean([n in words_of(h) for n, h in named])), 4) if named else -1


def words_of(text):
    return text.lower().replace("?", " ").replace(".", " ").split()


def question_name(question, names):
    """The creature a question asks about (a word of it that is one of the world's names), or None."""
    return next((w for w in words_of(question) if w in names), None)


def asr_name_acc(asr, cfg, split, items, names):
    """The recognizer alone (greedy, no character LM) on the same questions: is the name spelled right?"""
    if not items:
        return 0.0
    sp = spokenworld.SpeechSplit(cfg["data_dir"], split)
    clips = []
    for i, tr, _ in items:
        wav, _ = sp.dialogue(i)
        clips.append(torch.as_tensor(wav[spokenworld.USER, int(tr["start"] * SAMPLE_RATE):int(tr["end"] * SAMPLE_RATE) + SAMPLE_RATE // 20]))
    heard = asr.transcribe(clips, beam=0)
    return round(float(np.mean([question_name(tr["text"], names) in h.split() for (_, tr, _), h in zip(items, heard)])), 4)


def evaluate_sft_real(cfg, model, codec, tok):
    """Response onsets on held-out dialogues of the user's own corpus (split real_heldout): after
    each user turn the recording answers, when does the model start to answer? (The QA figures
    need SpokenWorld's questions with known answers: not measured on the user's dialogues.)"""
    speech_dir = os.path.join(cfg["out_dir"], "speech")
    path = os.path.join(speech_dir, "real_heldout_text.bin")
    if not os.path.exists(path) or not os.path.getsize(path):
        print("sft: no held-out two-channel dialogues of the user's (split real_heldout): no _real figures")
        return {}
    streams = Streams(speech_dir, "real_heldout")
    items = [(i, tr, nxt) for i, d in enumerate(streams.dialogues) for tr, nxt in zip(d["turns"], d["turns"][1:])
             if tr["speaker"] == "user" and nxt["speaker"] == "assistant"]
    if not items:
        return {}
    silence = user_silence(codec, load_ear(model, cfg["out_dir"], cfg["device"]))
    pad_col = np.concatenate([[PAD], silence_codes(codec).numpy(), silence.numpy()])
    hist, user, starts, _ = qa_batch(streams, items, cfg["sft_eval_history"], silence, pad_col)
    torch.manual_seed(cfg["seed"])
    device = cfg["device"]
    text, codes = free_run(model, hist.to(device), user.to(device), silence.to(device), (0, 0, AUDIO_TEMP, AUDIO_TOP_K))
    wavs = codec.decode(codes.transpose(1, 2).to(device)).cpu()
    onsets_text, onsets_audio = [], []
    for n, (_, tr, _) in enumerate(items):
        ids = text[n].tolist()
        q_end = tr["end"] - starts[n] * FRAME_S
        first = next((f for f, t in enumerate(ids) if t == ASSISTANT and f * FRAME_S >= q_end - FRAME_S), None)
        if first is not None:
            onsets_text.append(first * FRAME_S - q_end)
        voiced = voiced_onset(wavs[n], q_end)
        if voiced is not None:
            onsets_audio.append(voiced)
    ms = lambda xs: round(1000 * float(np.median(xs))) if xs else -1
    figures = {"sft_onset_text_ms_real": ms(onsets_text), "sft_onset_audio_ms_real": ms(onsets_audio),
               "sft_onset_corpus_ms_real": ms([nxt["start"] - tr["end"] for _, tr, nxt in items]),
               "sft_onset_turns_real": len(items)}
    print(f"sft on {len(items)} answered user turns of held-out dialogues of {cfg['speech_eval_data'] or cfg['speech_data']}: "
          f"onset {figures['sft_onset_text_ms_real']} ms (text), {figures['sft_onset_audio_ms_real']} ms (audio), "
          f"{figures['sft_onset_corpus_ms_real']} ms in the recordings")
    return figures


def voiced_onset(wav, after_s, win=VAD_WIN):
    """Seconds from after_s to the first 20 ms window of wav louder than VOICED_RMS, or None."""
    start = int(after_s * SAMPLE_RATE)
    x = wav[max(0, start):]
    n = len(x) // win
    if n == 0:
        return None
    rms = x[:n * win].reshape(n, win).pow(2).mean(1).sqrt()
    loud = (rms > VOICED_RMS).nonzero()
    return float(loud[0]) * win / SAMPLE_RATE + max(0, start) / SAMPLE_RATE - after_s if len(loud) else None


def judge_ceiling(asr, codec, cfg):
    """The judge on the corpus's own unseen-voice answers, original audio and through the codec."""
    sp = spokenworld.SpeechSplit(cfg["data_dir"], "unseen_voice")
    wavs, qs, ans = [], [], []
    for i in range(len(sp)):
        wav, d = sp.dialogue(i)
        turns = d["turns"]
        for j, tr in enumerate(turns):
            if tr["speaker"] == "user" and tr["kind"] == "question" and tr.get("answer"):
                reply = next((u for u in turns[j + 1:] if u["speaker"] == "assistant"), None)
                if reply is None or reply.get("interrupted"):
                    continue  # a reply cut off before its answer word cannot be judged right
                s, e = int(reply["start"] * SAMPLE_RATE), int(reply["end"] * SAMPLE_RATE) + SAMPLE_RATE // 10
                wavs.append(wav[spokenworld.ASSISTANT, s:e])
                qs.append(tr["text"])
                ans.append(tr["answer"])
    ok, _ = judge_wavs(asr, wavs, qs, ans)
    decoded = [metrics.codec_roundtrip(codec, w) for w in wavs]
    ok_codec, _ = judge_wavs(asr, decoded, qs, ans)
    # and a judge must say no: each answer heard against another question with another answer
    pairs = [(i, next(k for k in range(1, len(wavs)) if ans[(i + k) % len(wavs)] != ans[i])) for i in range(len(wavs))]
    wrong, _ = judge_wavs(asr, [wavs[i] for i, _ in pairs], [qs[(i + k) % len(wavs)] for i, k in pairs],
                          [ans[(i + k) % len(wavs)] for i, k in pairs])
    return {"judge_acc_groundtruth": round(float(np.mean(ok)), 4), "judge_acc_codec": round(float(np.mean(ok_codec)), 4),
            "judge_false_accept": round(float(np.mean(wrong)), 4), "judge_answers": len(wavs)}


def cascade(asr, lm, tok, streams, items, cfg):
    """The modular baseline's accuracy (cascade_replies) on the items' questions."""
    qa, replies = cascade_replies(asr, lm, tok, streams, items, cfg)
    return round(float(np.mean([textlm.answer_in(r, it["answer"]) for r, it in zip(replies, qa)])), 4)


def cascade_replies(asr, lm, tok, streams, items, cfg):
    """The modular baseline: every user question of the dialogue transcribed (ASR + its LM), the
    dialogue so far as text (the assistant's replies as the corpus has them), the text LM answers.
    -> (the questions as the LM was asked them, dicts with question (as heard), context, answer and
    text (as said); its replies)."""
    sp = spokenworld.SpeechSplit(cfg["data_dir"], streams.split)
    by_dialogue = {}
    for n, (i, tr, _) in enumerate(items):
        by_dialogue.setdefault(i, []).append(n)
    qa = []
    for i, ns in by_dialogue.items():
        wav, d = sp.dialogue(i)
        turns = [tr for tr in d["turns"] if tr["kind"] in ("question", "answer")]
        users = [tr for tr in turns if tr["speaker"] == "user"]
        heard = asr.transcribe([wav[spokenworld.USER, int(tr["start"] * SAMPLE_RATE):int(tr["end"] * SAMPLE_RATE) + SAMPLE_RATE // 20] for tr in users],
                               beam=cfg["asr_beam"])
        heard = {id(tr): h for tr, h in zip(users, heard)}
        for n in ns:
            q = items[n][1]
            context = []
            for tr in turns:
                if tr["start"] >= q["start"]:
                    break
                context.append(["user", heard[id(tr)]] if tr["speaker"] == "user" else ["assistant", tr["text"]])
            qa.append(dict(question=heard[id(next(t for t in users if t["start"] == q["start"]))],
                           context=context[-6:], answer=q["answer"], text=q["text"]))
    return qa, textlm.answer_questions(lm, tok, qa, cfg["device"])


class TextView:
    """The dual-stream model in text-only mode, with the text LM's generate() interface."""

    def __init__(self, model):
        self.model = model

    def eval(self):
        return self

    def generate(self, idx, max_new_tokens, temperature=0.0, **kw):
        return self.model.generate_text(idx, max_new_tokens, temperature, stop=EOS)


def retention(model, lm, tok, cfg):
    """The text LM's held-out-phrasing QA asked of the dual-stream model in text-only mode."""
    items = spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "qa_eval.jsonl"))
    ours = textlm.qa_metrics(items, textlm.answer_questions(TextView(model), tok, items, cfg["device"]), "sft_text_qa_acc")
    theirs = textlm.qa_metrics(items, textlm.answer_questions(lm, tok, items, cfg["device"]))
    ours["sft_text_retention"] = round(ours["sft_text_qa_acc_seen"] / max(theirs["text_qa_acc_seen"], 1e-9), 4)
    return ours
