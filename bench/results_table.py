"""
The README's results table, printed from one run's report.json, so every figure in it comes from
the same run:

    python bench/results_table.py out/tiny/report.json > table.md

A row whose key the report lacks (a stage not run) is printed with a dash.
"""
import json
import sys

pct = lambda v: f"{100 * v:.1f}%"
num = lambda v: f"{v:g}"
sec = lambda v: f"{v:.0f} s"
ms = lambda v: f"{v:.0f} ms"
db = lambda v: f"{v:.2f} dB"

# stage, figure, (report key, format), ...   several keys share one cell, joined by " / "
ROWS = [
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
    ("align", "the model's own transcript of unseen-voice questions, WER", ("align_user_wer", pct)),
    ("sft", "spoken QA, text channel: val / unseen voices / text-only facts",
     ("sft_qa_text_val", pct), ("sft_qa_text_unseen_voice", pct), ("sft_qa_text_text_only", pct)),
    ("sft", "spoken QA, speech channel (the judge on its voice)",
     ("sft_qa_speech_val", pct), ("sft_qa_speech_unseen_voice", pct), ("sft_qa_speech_text_only", pct)),
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
    ("vocoder", "CER of held-out assistant turns resynthesized from units / through the codec",
     ("vocoder_cer", pct), ("vocoder_codec_cer", pct)),
    ("omni", "spoken QA, text: val / unseen voices / text-only facts",
     ("omni_qa_text_val", pct), ("omni_qa_text_unseen_voice", pct), ("omni_qa_text_text_only", pct)),
    ("omni", "spoken QA, speech", ("omni_qa_speech_val", pct), ("omni_qa_speech_unseen_voice", pct),
     ("omni_qa_speech_text_only", pct)),
    ("omni", "first audio after the question ends", ("omni_latency_ms", ms)),
]
STAGES = ["data", "tokenizer", "text", "units", "codec", "asr", "speech", "align", "sft", "duplex", "dpo", "vocoder", "omni"]


def table(report):
    lines = ["| stage | figure | value |", "|---|---|---|"]
    for stage, figure, *keys in ROWS:
        cells = [fmt(report[k]) if k in report else "-" for k, fmt in keys]
        lines.append(f"| {stage} | {figure} | {' / '.join(cells)} |")
    times = [f"{s} {sec(report[s + '_seconds'])}" for s in STAGES if f"{s}_seconds" in report]
    lines.append(f"| all | stage wall times | {', '.join(times)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "out/tiny/report.json") as f:
        print(table(json.load(f)))
