"""
The results tables, printed from one run's report.json, so every figure in a table comes from the
same run, headed by the line that names the run:

    python bench/results_table.py out/tiny/report.json                     # the README's headline table
    python bench/results_table.py out/tiny/report.json --full              # every stage's figures (docs/results.md)
    python bench/results_table.py out/tiny/report.json --run=run.json      # the run named by a small JSON
    python bench/results_table.py out/tiny/report.json --command="python train.py" --machine="2-core CPU" --date=2026-12-06

The run is named by --command, --preset, --machine and --date, or by the same fields of a JSON file
given as --run (flags win). The preset defaults to the report's folder when it is a preset's (out/<preset>/report.json).
A figure whose key the report lacks (a stage not run yet) is printed as a dash; the rows marked
optional below (figures only newer runs write) are left out when the report has none of their keys.
"""
import argparse
import json
import os

pct = lambda v: f"{100 * v:.1f}%"
num = lambda v: f"{v:g}"
sec = lambda v: f"{v:.0f} s"
ms = lambda v: f"{v:.0f} ms"
db = lambda v: f"{v:.2f} dB"
MISSING = "—"

# The headline: one row per stage of the pipeline, its figure on held-out voices (`unseen_voice`:
# eSpeak voice variants never heard in training) unless the figure says otherwise.
# (stage, figure, (report key, format), ...): several keys share one cell, joined by " / ".
HEADLINE = [
    ("text", "QA on held-out phrasings, seen facts / text-only facts", ("text_qa_acc_seen", pct),
     ("text_qa_acc_textonly", pct)),
    ("units", "PNMI, learned units / MFCC k-means (higher is better)", ("units_pnmi_hubert", num), ("units_pnmi_mfcc", num)),
    ("codec", "bitrate (bps) / log-mel distance", ("codec_bitrate_bps", num), ("codec_mel_db", db)),
    ("asr", "WER, beam search + character LM / greedy", ("asr_wer_lm", pct), ("asr_wer", pct)),
    ("asr", "names the creature in the question", ("asr_name_acc_unseen_voice", pct), "optional"),
    ("align", "its own transcript of unseen-voice questions, WER / names the creature", ("align_user_wer", pct),
     ("align_ear_name_acc", pct), "optional"),
    ("sft", "spoken QA, text channel / speech channel", ("sft_qa_text_unseen_voice", pct),
     ("sft_qa_speech_unseen_voice", pct)),
    ("sft", "taken apart: hears the creature's name / answers given the question's words / "
     "voice judged right given the answer's words", ("sft_ear_name_acc_unseen_voice", pct),
     ("sft_qa_text_heard_unseen_voice", pct), ("sft_voice_acc_unseen_voice", pct), "optional"),
    ("cascade", "spoken QA, ASR + LM -> text LM, same questions", ("cascade_qa_unseen_voice", pct)),
    ("judge", "ceiling: the corpus's own answers judged right, original audio / through the codec",
     ("judge_acc_groundtruth", pct), ("judge_acc_codec", pct)),
    ("judge", "ceiling in the reply window: the corpus's replies through the codec", ("judge_acc_window", pct),
     "optional"),
    ("duplex", "turn end: takes the turn, by its voice / median latency", ("duplex_turn_tor_vad", num),
     ("duplex_turn_latency_ms_vad", ms)),
    ("dpo", "spoken QA, speech channel before / after; text channel before / after",
     ("dpo_qa_speech_unseen_voice_before", pct), ("dpo_qa_speech_unseen_voice_after", pct),
     ("dpo_qa_text_unseen_voice_before", pct), ("dpo_qa_text_unseen_voice_after", pct)),
    ("omni", "spoken QA, text / speech; first audio after the question ends", ("omni_qa_text_unseen_voice", pct),
     ("omni_qa_speech_unseen_voice", pct), ("omni_latency_ms", ms)),
]

# Every stage's figures, for docs/results.md.
FULL = [
    ("data", "spoken training dialogues / evaluation splits (hours)", ("data_hours_train", num), ("data_hours_val", num),
     ("data_hours_unseen_voice", num), ("data_hours_text_only", num)),
    ("text", "validation loss (from ln 1024 = 6.93)", ("text_val_loss", num)),
    ("text", "QA on held-out phrasings: seen facts / text-only facts / arithmetic / name memory",
     ("text_qa_acc_seen", pct), ("text_qa_acc_textonly", pct), ("text_qa_acc_arith", pct), ("text_qa_acc_memory", pct)),
    ("units", "PNMI, learned units vs MFCC k-means (100 clusters each)", ("units_pnmi_hubert", num), ("units_pnmi_mfcc", num)),
    ("units", "phone purity, learned vs MFCC", ("units_phone_purity_hubert", num), ("units_phone_purity_mfcc", num)),
    ("codec", "bitrate (bps)", ("codec_bitrate_bps", num)),
    ("codec", "log-mel distance, full band / 0-4 kHz", ("codec_mel_db", db), ("codec_mel_db_0_4k", db)),
    ("codec", "codec2 1200 bps on the same clips (needs `pip install pycodec2`), full band / 0-4 kHz",
     ("codec2_1200_mel_db", db), ("codec2_1200_mel_db_0_4k", db)),
    ("codec", "codebook usage (perplexity / size), min over codebooks", ("codec_usage_min", num)),
    ("codec", "PNMI of codebook 0 / codebook 1 (semantic distillation)", ("codec_pnmi_q0", num), ("codec_pnmi_q1", num)),
    ("asr", "WER, beam search + character LM / greedy", ("asr_wer_lm", pct), ("asr_wer", pct)),
    ("asr", "WER + LM on held-out phrasings (val) / through the codec", ("asr_wer_heldout_phrasing_lm", pct),
     ("asr_wer_codec_lm", pct)),
    ("asr", "names the creature in the question: val / unseen voices", ("asr_name_acc_val", pct),
     ("asr_name_acc_unseen_voice", pct), "optional"),
    ("align", "the model's own transcript of unseen-voice questions, WER", ("align_user_wer", pct)),
    ("align", "names heard in 400 single questions in every held-out voice; their WER",
     ("align_ear_name_acc_turns", pct), ("align_user_wer_turns", pct), "optional"),
    ("judge", "ceiling: the corpus's own answers judged right, original audio / through the codec",
     ("judge_acc_groundtruth", pct), ("judge_acc_codec", pct)),
    ("judge", "answers heard against another question's answer, judged right", ("judge_false_accept", pct)),
    ("judge", "ceiling in the reply window, the corpus's replies through the codec: val / unseen voices",
     ("judge_acc_window_val", pct), ("judge_acc_window_unseen_voice", pct), "optional"),
    ("sft", "spoken QA, text channel: val / unseen voices / text-only facts",
     ("sft_qa_text_val", pct), ("sft_qa_text_unseen_voice", pct), ("sft_qa_text_text_only", pct)),
    ("sft", "spoken QA, speech channel (the judge on its voice)",
     ("sft_qa_speech_val", pct), ("sft_qa_speech_unseen_voice", pct), ("sft_qa_speech_text_only", pct)),
    ("sft", "taken apart, the ear: the creature's name heard, val / unseen voices",
     ("sft_ear_name_acc_val", pct), ("sft_ear_name_acc_unseen_voice", pct), "optional"),
    ("sft", "the ear on 400 single questions in every held-out voice: names heard; WER",
     ("sft_ear_name_acc_turns", pct), ("sft_user_wer_turns", pct), "optional"),
    ("sft", "taken apart, the brain: answers given the question's words, val / unseen voices",
     ("sft_qa_text_heard_val", pct), ("sft_qa_text_heard_unseen_voice", pct), "optional"),
    ("sft", "taken apart, the voice: judged right given the answer's words, val / unseen voices",
     ("sft_voice_acc_val", pct), ("sft_voice_acc_unseen_voice", pct), "optional"),
    ("sft", "cascade on the same questions (ASR + LM -> text LM)",
     ("cascade_qa_val", pct), ("cascade_qa_unseen_voice", pct), ("cascade_qa_text_only", pct)),
    ("sft", "text retention (seen-fact QA in text, against the text LM's)", ("sft_text_retention", pct)),
    ("sft", "response onset after the question: first text token / first voiced audio",
     ("sft_onset_text_ms", ms), ("sft_onset_audio_ms", ms)),
    ("duplex", "pause: takes the turn (lower is better), words / voice", ("duplex_pause_tor", num), ("duplex_pause_tor_vad", num)),
    ("duplex", "turn end: takes the turn, words / voice", ("duplex_turn_tor", num), ("duplex_turn_tor_vad", num)),
    ("duplex", "turn end: median latency, words / voice", ("duplex_turn_latency_ms", ms), ("duplex_turn_latency_ms_vad", ms)),
    ("duplex", "interruption: yields, words / voice", ("duplex_interrupt_yield", num), ("duplex_interrupt_yield_vad", num)),
    ("duplex", "interruption: keeps talking for, words / voice", ("duplex_interrupt_stop_ms", ms),
     ("duplex_interrupt_stop_ms_vad", ms)),
    ("duplex", "backchannel: keeps talking, words / voice", ("duplex_backchannel_continue", num),
     ("duplex_backchannel_continue_vad", num)),
    ("duplex", "real-time factor of the live loop, batch 1", ("duplex_rtf", num)),
    ("dpo", "spoken QA on unseen voices, speech channel before / after", ("dpo_qa_speech_unseen_voice_before", pct),
     ("dpo_qa_speech_unseen_voice_after", pct)),
    ("dpo", "spoken QA on unseen voices, text channel before / after", ("dpo_qa_text_unseen_voice_before", pct),
     ("dpo_qa_text_unseen_voice_after", pct)),
    ("dpo", "spoken QA on val, speech channel before / after; text before / after", ("dpo_qa_speech_val_before", pct),
     ("dpo_qa_speech_val_after", pct), ("dpo_qa_text_val_before", pct), ("dpo_qa_text_val_after", pct)),
    ("vocoder", "CER of held-out assistant turns resynthesized from units / through the codec",
     ("vocoder_cer", pct), ("vocoder_codec_cer", pct)),
    ("omni", "spoken QA, text: val / unseen voices / text-only facts",
     ("omni_qa_text_val", pct), ("omni_qa_text_unseen_voice", pct), ("omni_qa_text_text_only", pct)),
    ("omni", "spoken QA, speech", ("omni_qa_speech_val", pct), ("omni_qa_speech_unseen_voice", pct),
     ("omni_qa_speech_text_only", pct)),
    ("omni", "first audio after the question ends", ("omni_latency_ms", ms)),
]
PRESETS = ("tiny", "small")
STAGES = ["data", "tokenizer", "text", "units", "codec", "asr", "speech", "align", "sft", "duplex", "dpo", "vocoder", "omni"]


def stage_seconds(report, stage):
    """A stage's wall time in this run: its training (`<stage>_seconds`) and its evaluation (duplex
    only evaluates)."""
    present = [report[k] for k in (f"{stage}_seconds", f"{stage}_eval_seconds") if k in report]
    return sum(present) if present else None


def table(report, rows=HEADLINE, stage_times=False):
    lines = ["| stage | figure | value |", "|---|---|---|"]
    for stage, figure, *keys in rows:
        optional = keys[-1] == "optional"
        keys = keys[:-1] if optional else keys
        if optional and not any(k in report for k, _ in keys):
            continue
        cells = [fmt(report[k]) if k in report else MISSING for k, fmt in keys]
        lines.append(f"| {stage} | {figure} | {' / '.join(cells)} |")
    times = {s: stage_seconds(report, s) for s in STAGES}
    done = {s: t for s, t in times.items() if t is not None}
    if stage_times:
        cell = ", ".join(f"{s} {sec(t)}" for s, t in done.items()) or MISSING
        lines.append(f"| all | stage wall times (training + evaluation) | {cell} |")
    else:
        cell = f"{sum(done.values()) / 60:.1f} min" if done else MISSING
        if 0 < len(done) < len(STAGES):
            cell += f" ({len(done)} of {len(STAGES)} stages)"
        lines.append(f"| all | wall time, the stages' training and evaluation added up | {cell} |")
    return "\n".join(lines)


def run_line(run):
    """The line that names the run a table comes from."""
    parts = [f"`{run['command']}`" if run.get("command") else None,
             f"{run['preset']} preset" if run.get("preset") else None, run.get("machine"), run.get("date")]
    return "Run: " + ", ".join(p for p in parts if p) + "."


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("report", nargs="?", default="out/tiny/report.json")
    p.add_argument("--full", action="store_true", help="every stage's figures, not the headline")
    p.add_argument("--run", help="a JSON file with the run's command, preset, machine and date")
    for field in ("command", "preset", "machine", "date"):
        p.add_argument(f"--{field}")
    args = p.parse_args(argv)
    with open(args.report) as f:
        report = json.load(f)
    run = {}
    if args.run:
        with open(args.run) as f:
            run = json.load(f)
    folder = os.path.basename(os.path.dirname(os.path.abspath(args.report)))   # out/<preset>/report.json
    if folder in PRESETS:
        run.setdefault("preset", folder)
    run.update({k: getattr(args, k) for k in ("command", "preset", "machine", "date") if getattr(args, k)})
    print(run_line(run) + "\n")
    print(table(report, FULL if args.full else HEADLINE, stage_times=args.full))


if __name__ == "__main__":
    main()
