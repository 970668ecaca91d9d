"""
The figures of LLaMA-Omni's way (stages `vocoder` and `omni`). Like the other evaluations it
loads what it scores, and no component imports it.

    vocoder_cer               ASR (greedy, no character LM) CER of held-out assistant turns
                              resynthesized from their own units, predicted durations
    vocoder_codec_cer         the same turns through the codec (encode, decode): the ceiling
    vocoder_duration_mae_ms   |predicted - true| frames per deduplicated unit, in ms

    omni_qa_text_<split>      the spoken questions the sft evaluation asks (same splits):
                              the answer word is in the text the LM writes
    omni_qa_speech_<split>    the fact-free judge (nanosdm/judge.py) hears it in the vocoded audio
    omni_unit_error_rate      edit distance of the decoder's units (text teacher-forced) to the
                              units of the real spoken answer, per reference unit (held-out answers)
    omni_latency_ms           median time from the end of the question to the first audio, batch 1,
                              compute included: the ear on the question, the prompt, text tokens
                              until omni_omega units are out, the vocoder's first chunk
    omni_text_retention       the text LM's QA asked of the omni model's LM in text, over the text LM's
"""
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from nanosdm import omni, omni_data, textlm
from nanosdm.corpus import spokenworld
from nanosdm.corpus.audio import SAMPLE_RATE
from nanosdm.eval import metrics
from nanosdm.eval.dialogue import QA_SPLITS
from nanosdm.judge import judge_wavs
from nanosdm.live import questions
from nanosdm.units import dedup
from nanosdm.vocoder import FRAME_MS, Vocoder, assistant_turns, duration_frames, plot_spectrograms, unit_frames


# -----------------------------------------------------------------------------
# stage `vocoder`

def heldout_assistant_turns(cfg, units, n):
    """Up to n complete assistant answers from the held-out splits (the assistant's voice is the
    same everywhere; these turns were never trained on), with their units at 50 Hz."""
    wavs, texts, frames = [], [], []
    for split in QA_SPLITS:
        turns = assistant_turns(cfg["data_dir"], split)
        w = [x for x, _ in turns]
        wavs += w
        texts += [tr["text"] for _, tr in turns]
        frames += unit_frames(units, w, cfg, f"units_{split}_assistant")
    step = max(1, len(wavs) // n)   # spread over the splits
    pick = list(range(0, len(wavs), step))[:n]
    return [wavs[i] for i in pick], [texts[i] for i in pick], [frames[i].long() for i in pick]


@torch.no_grad()
def evaluate_vocoder(cfg):
    from nanosdm.asr import ASR
    from nanosdm.codec import Codec
    from nanosdm.units import Units
    device, out_dir = cfg["device"], cfg["out_dir"]
    units = Units.load(os.path.join(out_dir, "units.pt"), device)
    codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
    asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
    voc = Vocoder.load(os.path.join(out_dir, "vocoder.pt"), device)
    wavs, texts, frames = heldout_assistant_turns(cfg, units, cfg["vocoder_eval_turns"])
    vocoded, vocoded_true, errors, n_units = [], [], [], 0
    t0, seconds = time.time(), 0.0
    for f in frames:
        values, durations = dedup(f)
        predicted = duration_frames(voc.durations(values[None].to(device))[0][0]).cpu()
        errors.append((predicted - durations).abs().float().sum().item())
        n_units += len(values)
        vocoded.append(voc.synthesize(values, codec).cpu())
        seconds += len(vocoded[-1]) / SAMPLE_RATE
        vocoded_true.append(voc.synthesize(values, codec, durations=durations).cpu())
    rtf = (time.time() - t0) / 2 / seconds
    through_codec = [metrics.codec_roundtrip(codec, w) for w in wavs]
    greedy = lambda clips: asr.transcribe(clips)          # beam 0: the acoustic model alone
    figures = dict(vocoder_cer=metrics.cer(texts, greedy(vocoded)),
                   vocoder_cer_true_durations=metrics.cer(texts, greedy(vocoded_true)),
                   vocoder_codec_cer=metrics.cer(texts, greedy(through_codec)),
                   vocoder_original_cer=metrics.cer(texts, greedy(wavs)),
                   vocoder_duration_mae_ms=sum(errors) / n_units * FRAME_MS,
                   vocoder_length_ratio=sum(len(v) for v in vocoded) / sum(len(v) for v in vocoded_true))
    figures = {k: round(v, 4) for k, v in figures.items()}
    figures.update(vocoder_eval_turns=len(wavs), vocoder_rtf=round(rtf, 4))
    print(f"vocoder on {len(wavs)} held-out assistant turns: CER {figures['vocoder_cer']:.1%} (true durations "
          f"{figures['vocoder_cer_true_durations']:.1%}), codec {figures['vocoder_codec_cer']:.1%}, original "
          f"{figures['vocoder_original_cer']:.1%}; duration MAE {figures['vocoder_duration_mae_ms']:.1f} ms per unit")
    plot_spectrograms([(texts[i], wavs[i], vocoded[i]) for i in range(min(3, len(wavs)))],
                      os.path.join(out_dir, "plots", "vocoder_spectrograms.png"))
    return figures


# -----------------------------------------------------------------------------
# stage `omni`

@torch.no_grad()
def evaluate_omni(cfg):
    from nanosdm.asr import ASR
    from nanosdm.codec import Codec
    from nanosdm.tokenizer import Tokenizer
    from nanosdm.units import Units
    device, out_dir = cfg["device"], cfg["out_dir"]
    model = omni.load_model(os.path.join(out_dir, "omni.pt"), device)
    voc = Vocoder.load(os.path.join(out_dir, "vocoder.pt"), device)
    codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
    asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
    units = Units.load(os.path.join(out_dir, "units.pt"), device)
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    k, block, omega = model.config["k"], model.lm.config["block_size"], cfg["omni_omega"]
    figures, latencies = {}, []
    for split in QA_SPLITS:
        sp = spokenworld.SpeechSplit(cfg["data_dir"], split)
        items = [it for it in omni_data.spoken_exchanges(cfg, split, asr, tok, complete_only=False) if it["turn"].get("answer")]
        assert len(items) == len(questions(sp)), "the dual-stream evaluation's questions, exactly"
        text_ok, wavs = [], []
        for it in tqdm(items, desc=f"omni QA {split}", leave=False):
            wav, _ = sp.dialogue(it["dialogue"])
            t0 = time.time()      # the question has just ended: hear it, then answer (batch 1)
            heard = omni_data.encode_speech(asr, [omni_data.user_audio(wav, it["turn"])])[0]
            example = omni_data.make_example(dict(it, question=heard), k, block, with_answer=False)
            out = omni.respond(model, example, voc, codec, omega, t0=t0)
            if out["first_audio_s"] is not None:
                latencies.append(1000 * out["first_audio_s"])
            text_ok.append(textlm.answer_in(tok.decode(out["tokens"]), it["turn"]["answer"]))
            wavs.append(out["wav"])
        speech_ok, hyps = judge_wavs(asr, wavs, [it["turn"]["text"] for it in items], [it["turn"]["answer"] for it in items])
        figures[f"omni_qa_text_{split}"] = round(float(np.mean(text_ok)), 4)
        figures[f"omni_qa_speech_{split}"] = round(float(np.mean(speech_ok)), 4)
        figures[f"omni_qa_questions_{split}"] = len(items)
        n = 0
        print(f"omni {split}: text {figures[f'omni_qa_text_{split}']:.1%}, speech {figures[f'omni_qa_speech_{split}']:.1%} "
              f"over {len(items)} questions; e.g. {items[n]['turn']['text']!r} -> heard {hyps[n]!r}")
    figures["omni_latency_ms"] = round(float(np.median(latencies))) if latencies else -1
    figures["omni_latency_p90_ms"] = round(float(np.percentile(latencies, 90))) if latencies else -1
    figures.update(unit_error_rate(model, units, asr, tok, cfg))
    figures.update(retention(model, tok, cfg))
    return figures


def unit_error_rate(model, units, asr, tok, cfg, max_answers=150):
    """The decoder's units for the real answer text (teacher-forced through the LM after the
    spoken question) against the units of the real spoken answer, held-out splits."""
    k, block = model.config["k"], model.lm.config["block_size"]
    examples, refs = [], []
    for split in QA_SPLITS:
        targets = omni.reply_units(cfg, units, split)
        ids = [d["id"] for d in spokenworld.SpeechSplit(cfg["data_dir"], split).dialogues]
        for it in omni_data.spoken_exchanges(cfg, split, asr, tok):
            ref = targets.get((ids[it["dialogue"]], it["reply"]["text"]))
            if ref is not None:
                examples.append(omni_data.make_example(it, k, block))
                refs.append(ref)
    step = max(1, len(examples) // max_answers)
    examples, refs = examples[::step][:max_answers], refs[::step][:max_answers]
    states = omni.answer_states(model, examples)
    hyps = [model.decoder.units(s[None].to(model.device))[0] for s in states]
    errors = sum(metrics.edit_distance(r.tolist(), h) for r, h in zip(refs, hyps))
    i = 0
    pieces = [tok.sp.id_to_piece(examples[i]["ids"][p]) for p in examples[i]["answer_pos"]]
    omni.plot_alignment(model, states[i], pieces, refs[i], os.path.join(cfg["out_dir"], "plots", "omni_ctc_alignment.png"))
    return {"omni_unit_error_rate": round(errors / sum(len(r) for r in refs), 4), "omni_unit_eval_answers": len(refs),
            "omni_units_per_answer_hyp": round(float(np.mean([len(h) for h in hyps])), 2),
            "omni_units_per_answer_ref": round(float(np.mean([len(r) for r in refs])), 2)}


def retention(model, tok, cfg):
    """The text LM's held-out QA asked of the omni model's LM (text in, text out)."""
    items = spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "qa_eval.jsonl"))
    ours = textlm.qa_metrics(items, textlm.answer_questions(model.lm, tok, items, cfg["device"]), "omni_text_qa_acc")
    lm = textlm.load_model(os.path.join(cfg["out_dir"], "text.pt"), cfg["device"])
    theirs = textlm.qa_metrics(items, textlm.answer_questions(lm, tok, items, cfg["device"]))
    ours["omni_text_retention"] = round(ours["omni_text_qa_acc_seen"] / max(theirs["text_qa_acc_seen"], 1e-9), 4)
    return ours
