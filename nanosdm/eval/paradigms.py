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
    params              parameters (utils.count_params)

This is the skeleton the `paradigms` stage fills in: dual_row and flat_row take a loaded model and
the questions; evaluate_dual_row loads a dual-stream checkpoint and the stages it hears and speaks
through.
"""
import os

import numpy as np
import torch

from nanosdm import dualstream, textlm, utils
from nanosdm.codec import FRAME_S
from nanosdm.corpus.audio import SAMPLE_RATE
from nanosdm.corpus.speech import Streams
from nanosdm.judge import judge_wavs
from nanosdm.live import (ANSWER_WINDOW_S, AUDIO_TEMP, AUDIO_TOP_K, free_run, load_ear, monologue_parts, qa_batch,
                          questions, reply_clips, silence_codes, user_silence)
from nanosdm.tokenizer import PAD

SPLIT = "unseen_voice"      # the table's questions: voices the rows never heard in training


def _mean(xs):
    return round(float(np.mean(xs)), 4) if len(xs) else -1


@torch.no_grad()
def dual_row(name, model, codec, tok, streams, history, judge=None, parallel_decoding=False, ear=None, seed=0):
    """A dual-stream row (any of its variants) on every question of `streams`, as evaluate_sft asks
    them: `history` steps of the dialogue before the question teacher-forced, then the question heard
    and ANSWER_WINDOW_S of free running, greedy text, audio as live.py samples it. judge: the ASR
    that judges speech."""
    device = next(model.parameters()).device
    quiet, silence = silence_codes(codec), user_silence(codec, ear)
    pad_col = np.concatenate([[PAD], quiet.numpy(), silence.numpy()])
    items = questions(streams)
    hist, user, starts, ends = qa_batch(streams, items, history, silence, pad_col)
    q_frames = [e - s for s, e in zip(starts, ends)]
    window = [q + int(ANSWER_WINDOW_S / FRAME_S) for q in q_frames]
    qs, answers = [tr["text"] for _, tr, _ in items], [tr["answer"] for _, tr, _ in items]
    torch.manual_seed(seed)
    text, codes = free_run(model, hist.to(device), user.to(device), silence.to(device), (0, 0, AUDIO_TEMP, AUDIO_TOP_K),
                           parallel_decoding=parallel_decoding)
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
    return figures


@torch.no_grad()
def flat_row(name, model, v, tok, items, speak=None, judge=None, start=(), max_new_tokens=300):
    """A flat row (flat.py) on items [dict(question_units, question, answer)]: greedy replies, the
    answer text where the format writes one, and with speak (answer unit ids -> 16 kHz wav, e.g. the
    unit vocoder) and judge, the spoken answer judged and the steps per second of reply audio."""
    from nanosdm import flat
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


def evaluate_dual_row(cfg, name, path, parallel_decoding=False):
    """One dual-stream row from its checkpoint, hearing and speaking through the run's codec (and
    ear), judged by its ASR."""
    from nanosdm.asr import ASR
    from nanosdm.codec import Codec
    from nanosdm.tokenizer import Tokenizer
    device, out_dir = cfg["device"], cfg["out_dir"]
    model = dualstream.load_model(path, device)
    codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
    streams = Streams(os.path.join(out_dir, "speech"), SPLIT)
    return dual_row(name, model, codec, tok, streams, cfg["sft_eval_history"], asr, parallel_decoding,
                    load_ear(model, out_dir, device), cfg["seed"])
