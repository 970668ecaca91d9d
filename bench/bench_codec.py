"""
Streaming speed of the codec: encode + decode one 80 ms frame at a time, batch 1, on the CPU.

    python bench/bench_codec.py                              # the tiny preset's codec (untrained weights)
    python bench/bench_codec.py --preset=small --threads=2
    python bench/bench_codec.py --ckpt=out/tiny/codec.pt     # a trained checkpoint
    python bench/bench_codec.py --ckpt=out/tiny/codec.pt --compile   # eager and torch.compile side by side
    python bench/bench_codec.py --codec_dim=128 --codec_enc_layers=2   # any train.py codec_* override

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
parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps (needs a C++ "
                    "compiler; a minute or two to compile)")
args, overrides = parser.parse_known_args()
torch.set_num_threads(args.threads)

if args.ckpt:
    model = Codec.load(args.ckpt)
else:
    cfg = train.parse_config([f"--preset={args.preset}"] + overrides)
    model = Codec(**{k: cfg[f"codec_{k}"] for k in ("dim", "sub_dim", "enc_layers", "dec_layers", "sub_layers",
                                                    "kernel", "latent_dim", "n_q", "codebook_size")}).eval()
n_frames = int(args.seconds * SAMPLE_RATE) // FRAME
wav = torch.randn(1, n_frames, FRAME) * 0.1
print(f"codec {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {model.bitrate:g} bps, "
      f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")


def stream_pass(encode_step, decode_step):
    """One pass over the clip, frame by frame -> (encode, decode) seconds per frame."""
    enc, dec = model.encoder_state(1), model.decoder_state(1)
    t_enc = t_dec = 0.0
    for t in range(n_frames):
        t0 = time.perf_counter()
        codes, enc = encode_step(wav[:, t], enc)
        t1 = time.perf_counter()
        _, dec = decode_step(codes, dec)
        t_enc, t_dec = t_enc + t1 - t0, t_dec + time.perf_counter() - t1
    return t_enc / n_frames, t_dec / n_frames


def hot_op_us(fn, n=2000):
    """Microseconds per call of fn repeated in a tight loop: this machine's floor for one op."""
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


steps = {"eager": (model.encode_step, model.decode_step)}
with torch.inference_mode():
    if args.compile:
        # inductor writes C++ for the fused elementwise ops; the C++ wrapper calls them without Python
        # in between and frozen weights are constants: batch-1 streaming is made of per-op overhead
        options = {"cpp_wrapper": True, "freezing": True}
        compiled = (torch.compile(model.encode_step, dynamic=False, options=options),
                    torch.compile(model.decode_step, dynamic=False, options=options))
        t0 = time.perf_counter()
        enc, dec, diff = model.encoder_state(1), model.decoder_state(1), 0.0
        enc_c, dec_c = model.encoder_state(1), model.decoder_state(1)
        for t in range(min(n_frames, 8)):       # the second frame recompiles once: its state is strided
            codes, enc = model.encode_step(wav[:, t], enc)
            out, dec = model.decode_step(codes, dec)
            try:
                codes_c, enc_c = compiled[0](wav[:, t], enc_c)
                out_c, dec_c = compiled[1](codes, dec_c)
            except Exception as e:   # most often: no C++ compiler for inductor's generated code
                raise SystemExit(f"torch.compile failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}). "
                                 "It needs a C++ compiler (g++, or one named by $CXX); without --compile this "
                                 "benchmark times the eager steps only.") from None
            assert torch.equal(codes, codes_c), "the compiled encoder chose other codes"
            diff = max(diff, (out - out_c).abs().max().item())
        print(f"torch.compile: {time.perf_counter() - t0:.0f} s to compile, same codes, "
              f"audio within {diff:.1e} of eager")
        steps["compiled"] = compiled
    results = {name: [] for name in steps}
    for rep in range(args.repeats + 1):                  # the first pass warms up
        for name, (encode_step, decode_step) in steps.items():   # interleaved: both see the same noise
            t_enc_dec = stream_pass(encode_step, decode_step)
            if rep:
                results[name].append(t_enc_dec)
    flat = wav.reshape(1, -1)
    t0 = time.perf_counter()
    model.decode(model.encode(flat))
    t_batch = time.perf_counter() - t0
    x, w = torch.randn(1, 192), torch.randn(384, 192)
    floor_add, floor_mv = hot_op_us(lambda: x + x), hot_op_us(lambda: x @ w.T)

frame_s = FRAME / SAMPLE_RATE
for name, passes in results.items():
    t_enc, t_dec = min(passes, key=sum)                  # the least disturbed pass
    print(f"streaming, batch 1, {name}: encode {t_enc * 1e3:.3f} ms + decode {t_dec * 1e3:.3f} ms per 80 ms "
          f"frame = {frame_s / (t_enc + t_dec):.0f}x faster than real time")
print(f"whole clip at once ({args.seconds:g} s): {args.seconds / t_batch:.0f}x faster than real time")
print(f"this machine, hot in a tight loop: {floor_add:.1f} us per small add, {floor_mv:.1f} us per 192x384 "
      f"matrix-vector product (a streaming frame costs far more per op: caches go cold between ops)")
