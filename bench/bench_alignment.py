"""
How well CTC forced alignment with the recognizer (asr.align_words) finds word timings, on
SpokenWorld turns whose true timings eSpeak reported, and how long it takes per turn.

    python bench/bench_alignment.py                                        # data/tiny, out/tiny/asr.pt
    python bench/bench_alignment.py --data_dir=/work/run2/data/tiny --ckpt=/work/run2/out/tiny/asr.pt
    python bench/bench_alignment.py --splits=unseen_voice --speakers=user --limit=50

Prints, per split and speaker, the median |error| of word starts, ends and both (ms), the 90th
percentile of both, and milliseconds per turn (the recognizer's forward pass included). The
word-boundary rule (asr.WORD_START_FRAMES, WORD_END_FRAMES) was fitted on the train split:
judge it on val and unseen_voice. Note the machine's load beside the times (`uptime`).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanosdm import asr  # noqa: E402
from nanosdm.corpus.spokenworld import SpeechSplit  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--data_dir", default="data/tiny")
parser.add_argument("--ckpt", default="out/tiny/asr.pt")
parser.add_argument("--splits", default="val,unseen_voice")
parser.add_argument("--speakers", default="user,assistant")
parser.add_argument("--limit", type=int, default=0, help="at most this many turns per split and speaker (0: all)")
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)

model = asr.ASR.load(args.ckpt)
print(f"{args.ckpt} on {args.data_dir}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
keys = ["align_start_ms", "align_end_ms", "align_ms", "align_p90_ms", "align_words", "align_skipped", "align_ms_per_item"]
print(f"{'split':>14} {'speaker':>10} " + " ".join(f"{k[6:]:>14}" for k in keys))
for split in args.splits.split(","):
    for speaker in args.speakers.split(","):
        items = [(wav, turn["words"]) for wav, turn in SpeechSplit(args.data_dir, split).utterances(speaker=speaker)]
        items = items[:args.limit] if args.limit else items
        res = asr.alignment_errors(model, items)
        print(f"{split:>14} {speaker:>10} " + " ".join(f"{res[k]:>14}" for k in keys))
