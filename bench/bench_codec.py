"""
Streaming speed of the codec: encode + decode one 80 ms frame at a time, batch 1, on the CPU.

    python bench/bench_codec.py                              # the tiny preset's codec (untrained weights)
    python bench/bench_codec.py --preset=small --threads=2
    python bench/bench_codec.py --ckpt=out/tiny/codec.pt     # a trained checkpoint

Speed does not depend on the weights, so an untrained codec of the same configuration measures the
same. Reports milliseconds per frame and times faster than real time (80 ms of audio per frame);
note the machine's load beside the figure (`uptime`): on a busy CPU the figure drops a lot.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from nanosdm.codec import FRAME, SAMPLE_RATE, Codec  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--preset", default="tiny")
parser.add_argument("--ckpt", default="")
parser.add_argument("--threads", type=int, default=1)  # batch-1 frames are too small to share out
parser.add_argument("--seconds", type=float, default=20.0)
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()
torch.set_num_threads(args.threads)

if args.ckpt:
    model = Codec.load(args.ckpt)
else:
    cfg = train.parse_config([f"--preset={args.preset}"])
    model = Codec(**{k: cfg[f"codec_{k}"] for k in ("dim", "sub_dim", "enc_layers", "dec_layers", "sub_layers",
                                                    "kernel", "latent_dim", "n_q", "codebook_size")}).eval()
n_frames = int(args.seconds * SAMPLE_RATE) // FRAME
wav = torch.randn(1, n_frames, FRAME) * 0.1
print(f"codec {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {model.bitrate:g} bps, "
      f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")

with torch.inference_mode():
    results = []
    for rep in range(args.repeats + 1):                  # the first pass warms up
        enc, dec = model.encoder_state(1), model.decoder_state(1)
        t_enc = t_dec = 0.0
        for t in range(n_frames):
            t0 = time.perf_counter()
            codes, enc = model.encode_step(wav[:, t], enc)
            t1 = time.perf_counter()
            _, dec = model.decode_step(codes, dec)
            t_enc, t_dec = t_enc + t1 - t0, t_dec + time.perf_counter() - t1
        if rep:
            results.append((t_enc / n_frames, t_dec / n_frames))
    t_enc, t_dec = min(results, key=sum)                 # the least disturbed pass
    flat = wav.reshape(1, -1)
    t0 = time.perf_counter()
    model.decode(model.encode(flat))
    t_batch = time.perf_counter() - t0

frame_s = FRAME / SAMPLE_RATE
print(f"streaming, batch 1: encode {t_enc * 1e3:.3f} ms + decode {t_dec * 1e3:.3f} ms per 80 ms frame "
      f"= {frame_s / (t_enc + t_dec):.0f}x faster than real time")
print(f"whole clip at once ({args.seconds:g} s): {args.seconds / t_batch:.0f}x faster than real time")
