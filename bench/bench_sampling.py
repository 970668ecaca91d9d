"""
How the dual-stream model's audio should be sampled: its voice, judged, for several audio sampling
settings, with the answer's words given (the recorded text stream forced over the whole window, as
sft_voice_acc does), so that only the voice varies. Moshi samples audio at temperature 0.8, top-k
250 of 2048 codes; the tiny codec has 256 codes a codebook, where top-k 250 is no top-k at all.

    python bench/bench_sampling.py                                 # out/tiny, data/tiny, unseen_voice
    python bench/bench_sampling.py --out_dir=/work/run/out/tiny --data_dir=/work/run/data/tiny --splits=val,unseen_voice

Prints one row per setting: the judge's accuracy on the replies, against its ceiling (the corpus's
own codes in the same windows), and seconds per setting. Each setting starts from the same seed.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanosdm.asr import ASR  # noqa: E402
from nanosdm.codec import FRAME_S, Codec  # noqa: E402
from nanosdm.corpus.speech import Streams  # noqa: E402
from nanosdm.dualstream import load_model  # noqa: E402
from nanosdm.eval.dialogue import recorded_window  # noqa: E402
from nanosdm.judge import judge_wavs  # noqa: E402
from nanosdm.live import (ANSWER_WINDOW_S, free_run, load_ear, qa_batch, questions, reply_clips,  # noqa: E402
                          silence_codes, user_silence)
from nanosdm.tokenizer import PAD  # noqa: E402

SETTINGS = [(0.0, 0), (0.8, 2), (0.8, 5), (0.8, 20), (0.5, 5), (1.0, 5), (0.8, 250)]   # (temperature, top-k)

parser = argparse.ArgumentParser()
parser.add_argument("--out_dir", default="out/tiny")
parser.add_argument("--data_dir", default="data/tiny")
parser.add_argument("--model", default="sft")
parser.add_argument("--splits", default="unseen_voice")
parser.add_argument("--history", type=int, default=40, help="frames of the dialogue before each question")
parser.add_argument("--seed", type=int, default=1337)
args = parser.parse_args()

model = load_model(os.path.join(args.out_dir, f"{args.model}.pt"))
codec = Codec.load(os.path.join(args.out_dir, "codec.pt"))
asr = ASR.load(os.path.join(args.out_dir, "asr.pt"))
quiet, silence = silence_codes(codec), user_silence(codec, load_ear(model, args.out_dir))
pad_col = np.concatenate([[PAD], quiet.numpy(), silence.numpy()])
print(f"{args.model}.pt in {args.out_dir}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
for split in args.splits.split(","):
    streams = Streams(os.path.join(args.out_dir, "speech"), split)
    items = questions(streams)
    hist, user, starts, ends = qa_batch(streams, items, args.history, silence, pad_col)
    q_frames = [e - s for s, e in zip(starts, ends)]
    window = [q + int(ANSWER_WINDOW_S / FRAME_S) for q in q_frames]
    qs, ans = [tr["text"] for _, tr, _ in items], [tr["answer"] for _, tr, _ in items]
    rec_text, rec_codes = recorded_window(streams, items, starts, user.shape[1], quiet)
    ceiling, _ = judge_wavs(asr, reply_clips(codec.decode(rec_codes.transpose(1, 2)), q_frames, window), qs, ans)
    print(f"\n{split}: {len(items)} questions; the judge's ceiling (the corpus's own codes) {np.mean(ceiling):.1%}")
    print(f"{'temperature':>12} {'top-k':>6} {'voice acc':>10} {'of ceiling':>11} {'seconds':>8}")
    for temp, top_k in SETTINGS:
        t0 = time.time()
        torch.manual_seed(args.seed)
        _, codes = free_run(model, hist, user, silence, (0, 0, temp, top_k), force_text=rec_text)
        ok, _ = judge_wavs(asr, reply_clips(codec.decode(codes.transpose(1, 2)), q_frames, window), qs, ans)
        print(f"{temp:>12} {top_k:>6} {np.mean(ok):>10.1%} {np.mean(ok) / max(np.mean(ceiling), 1e-9):>11.1%} "
              f"{time.time() - t0:>8.0f}", flush=True)
