"""Small helpers every stage shares: device choice, atomic checkpoints, the LR schedule, report.json."""
import contextlib
import json
import math
import os
import random

import numpy as np
import torch


def get_device(name="auto"):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fast_bf16(device):
    """Whether bf16 pays on this device: CUDA with bf16, or a CPU with native bf16 (AVX-512 BF16 /
    AMX). On a CPU with AVX2 only, emulated bf16 matmuls run ~100x slower than fp32."""
    dev = device.split(":")[0]
    if dev == "cpu":
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dev == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device, enabled=True):
    """bf16 autocast where fast_bf16(device); a no-op elsewhere (and when not enabled)."""
    if enabled and fast_bf16(device):
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resume(path, model, opt, device, max_steps, extra=()):
    """Model and optimizer state from path when it holds an unfinished run of the same model
    config; returns the checkpoint (its "step", "history", ...), or None to start from scratch.
    extra: (key, module or optimizer) pairs saved beside them, e.g. a discriminator and its optimizer."""
    if not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path, device)
    if ckpt["config"] != model.config or ckpt["step"] >= max_steps or any(ckpt.get(k) is None for k, _ in extra):
        print(f"{path} is finished or from another config: training from scratch")
        return None
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    for key, obj in extra:
        obj.load_state_dict(ckpt[key])
    print(f"resuming from {path} at step {ckpt['step']}")
    return ckpt


def cosine_lr(step, max_steps, lr, warmup=0, min_lr_frac=0.1):
    """Linear warmup, then cosine decay to lr * min_lr_frac."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(path, obj):
    """Write to a temporary file, then rename: a killed run never leaves a half-written checkpoint.
    obj must hold only tensors and JSON-like values, so that weights_only=True can load it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class CorruptCheckpoint(RuntimeError):
    pass


def load_checkpoint(path, map_location="cpu"):
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path} (run the stage that writes it first)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated zip, a file that is not a checkpoint, a pickled object
        # save_checkpoint never leaves a half-written file, so this one was damaged or replaced afterwards
        raise CorruptCheckpoint(f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:80]}); "
                                f"it is truncated or not a nanosdm checkpoint: delete it (or restore a copy) and "
                                f"rerun the stage that writes it, which then trains from scratch") from None


def load_model(cls, path, device="cpu"):
    """A model saved as dict(config=..., model=state_dict): rebuilt from its config, weights in, eval mode."""
    ckpt = load_checkpoint(path, device)
    model = cls(**ckpt["config"]).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def update_report(out_dir, metrics):
    """Merge metrics (name -> number) into out_dir/report.json, a flat JSON object."""
    path = os.path.join(out_dir, "report.json")
    report = {}
    if os.path.exists(path):
        with open(path) as f:
            report = json.load(f)
    for k, v in metrics.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise TypeError(f"report.json holds numbers only; {k}={v!r}")
        report[k] = v
    os.makedirs(out_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return report


def figure(nrows=1, ncols=1, figsize=None, **subplots_kw):
    """A matplotlib Figure and its axes, made without pyplot: no GUI backend is chosen or switched
    (a notebook's stays as it was) and no global figure is left open to close."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def save_figure(fig, path, dpi=110):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
