"""Small helpers every stage shares: device choice, atomic checkpoints, the LR schedule, report.json."""
import contextlib
import datetime
import json
import math
import os
import random

import numpy as np
import torch
import torch.distributed as dist


def get_device(name="auto"):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# -----------------------------------------------------------------------------
# distributed data parallel, nanoGPT style: torchrun starts one process per GPU (or CPU worker) and
# sets RANK / LOCAL_RANK / WORLD_SIZE. Every rank draws the same global batch (the generators are
# seeded by the step), keeps its own share of it, and the gradients are averaged across ranks before
# each optimizer step, so N ranks take exactly the step one process would take on the whole batch.
# Rank 0 alone writes checkpoints, plots and report.json. Without torchrun all of this is a no-op.

def ddp_setup(device):
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU); returns the
    device this rank uses (cuda:LOCAL_RANK on a multi-GPU machine)."""
    if "RANK" not in os.environ or dist.is_initialized():
        return device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    # rank 0 evaluates each stage alone while the others wait at a barrier: allow it hours, not minutes
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=datetime.timedelta(hours=6))
    return device


def ddp_active():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if ddp_active() else 0


def world_size():
    return dist.get_world_size() if ddp_active() else 1


def is_main():
    return rank() == 0


def barrier():
    if ddp_active():
        dist.barrier()


def shard(x):
    """This rank's share of a global batch (a tensor, or a list/tuple of them, split on dim 0)."""
    if isinstance(x, (list, tuple)):
        return type(x)(shard(t) for t in x)
    n = world_size()
    if n == 1:
        return x
    if len(x) % n:
        raise ValueError(f"a batch of {len(x)} does not split evenly over {n} ranks: make the batch size a multiple of it")
    per = len(x) // n
    return x[rank() * per:(rank() + 1) * per]


def all_reduce_grads(params):
    """Average the gradients over the ranks, in one flat all-reduce. A parameter without a gradient on
    this rank (a branch its share of the batch never took) takes part as zeros, so every rank applies
    the very same update."""
    if not ddp_active():
        return
    params = [p for p in params if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    i = 0
    for p in params:
        p.grad = flat[i:i + p.numel()].view_as(p).clone()
        i += p.numel()


def all_reduce_sum_(t):
    """In place: t summed over the ranks (e.g. codebook statistics of the whole batch)."""
    if ddp_active():
        dist.all_reduce(t)
    return t


def broadcast_(t):
    """In place: rank 0's value of t on every rank (e.g. a random choice only rank 0 should make)."""
    if ddp_active():
        dist.broadcast(t, 0)
    return t


def mean_over_ranks(x):
    """A float (a loss) averaged over the ranks: the loss of the global batch, for logs."""
    if not ddp_active():
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world_size()


def report_replicas(module, name):
    """Under torchrun, every rank says how far its weights are from rank 0's (check_replicas)."""
    if ddp_active():
        print(f"ddp rank {rank()}: {name} weights equal rank 0's (max difference {check_replicas(module):g})")


def broadcast_module(module):
    """Rank 0's weights and buffers on every rank: replicas start identical whatever each computed."""
    if ddp_active():
        for t in module.state_dict().values():
            if t.dtype == torch.bool:                # gloo moves no bools
                u = t.to(torch.uint8)
                dist.broadcast(u, 0)
                t.copy_(u.bool())
            else:
                dist.broadcast(t, 0)


def check_replicas(module):
    """The largest difference between this rank's weights and rank 0's (0.0 when they are
    identical, as gradient averaging keeps them); raises if they drifted apart."""
    if not ddp_active():
        return 0.0
    diff = 0.0
    for t in module.state_dict().values():
        t = t.detach().to(torch.uint8) if t.dtype == torch.bool else t.detach()
        ref = t.clone()
        dist.broadcast(ref, 0)
        if t.is_floating_point():
            diff = max(diff, (t.detach().float() - ref.float()).abs().max().item())
        elif not torch.equal(t, ref):
            diff = float("inf")
    d = torch.tensor([diff], dtype=torch.float64)
    dist.all_reduce(d, op=dist.ReduceOp.MAX)
    if d.item() > 0:
        raise RuntimeError(f"ddp: the replicas drifted apart (max weight difference {d.item():.3g})")
    return d.item()


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


# settings a killed run may change before it is resumed: they do not change the steps it takes
RESUME_FREE_SUFFIXES = ("_ckpt_interval",)


def run_settings(cfg, stage):
    """The settings a stage's training run depends on, recorded in its checkpoints so that a killed
    run resumes only into the same run: the ones train.py names for the stage (cfg["train_settings"],
    from its STAGES table: its own keys, the extra ones, the seed, less what only its evaluation
    reads), or, when a component is trained directly (tests, notebooks), its <stage>_* keys and the seed."""
    settings = cfg.get("train_settings")
    if settings is None:
        settings = {k: cfg[k] for k in sorted(cfg) if k.startswith(f"{stage}_") or k == "seed"}
    return {k: v for k, v in settings.items() if not k.endswith(RESUME_FREE_SUFFIXES)}


def changed_settings(saved, now):
    """'key=old -> new, ...' for the settings that differ between a checkpoint's and now ("" if
    none, or if the checkpoint was written before checkpoints recorded their settings)."""
    if saved is None or now is None:
        return ""
    changed = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    return ", ".join(f"{k}={saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:4]) + (", ..." if len(changed) > 4 else "")


def resume(path, model, opt, device, max_steps, extra=(), settings=None):
    """Model and optimizer state from path when it holds an unfinished run of the same model config
    and the same training settings (run_settings, saved in the checkpoint as "settings"); returns
    the checkpoint (its "step", "history", ...), or None to start from scratch.
    A partial run is not continued under a changed setting (a learning rate, a batch size, max_steps:
    the steps already taken followed another schedule or data): it starts over, and says which
    setting changed. Starting over rather than refusing: the stage runner trains a stage again
    exactly when its settings change, so the changed setting is what was asked for.
    extra: (key, module or optimizer) pairs saved beside them, e.g. a discriminator and its optimizer."""
    if not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path, device)
    if ckpt["config"] != model.config or ckpt["step"] >= max_steps or any(ckpt.get(k) is None for k, _ in extra):
        print(f"{path} is finished or from another config: training from scratch")
        return None
    changed = changed_settings(ckpt.get("settings"), settings)
    if changed:
        print(f"{path} is a run with other settings ({changed}): training from scratch")
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
    obj must hold only tensors and JSON-like values, so that weights_only=True can load it.
    Under torchrun only rank 0 writes (every rank holds the same weights)."""
    if not is_main():
        return
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


def count_params(model):
    """Every parameter of a model: the paradigms are compared at (about) equal counts."""
    return sum(p.numel() for p in model.parameters())


def update_report(out_dir, metrics, drop=()):
    """Merge metrics (name -> number) into out_dir/report.json, a flat JSON object, after removing
    the keys in drop (a stage's old figures)."""
    path = os.path.join(out_dir, "report.json")
    report = {}
    if os.path.exists(path):
        with open(path) as f:
            report = json.load(f)
    for k in drop:
        report.pop(k, None)
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
    if not is_main():
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
