"""
Train every stage of nanosdm, in order, on one machine.

    python train.py                       # all stages, tiny preset (a 2-core CPU, minutes)
    python train.py --preset=small        # one GPU
    python train.py --stage=text          # one stage (runs it again even if finished)
    python train.py --preset=tiny --text_max_steps=100 --device=cpu

Configuration is nanoGPT-style: the defaults below are plain values, a preset overrides some of
them, and --key=value overrides anything (an unknown key or a value of the wrong type is an error).
Every stage reads what earlier stages wrote under out/<preset>/ and data/<preset>/, writes its
checkpoint there, and merges its measured figures into out/<preset>/report.json.
"""
import json
import os
import sys
import time

from nanosdm import utils

# -----------------------------------------------------------------------------
# defaults (the tiny preset)
preset = "tiny"
stage = "all"          # "all" runs every unfinished stage in order; a stage name runs that one
device = "auto"        # auto -> cuda, mps or cpu
seed = 1337
data_root = "data"
out_root = "out"
workers = 0            # processes for data generation; 0 -> all cores
# --- data: the SpokenWorld corpus (nanosdm/data.py)
data_entities = 200            # entities in the world
data_text_only_frac = 0.15     # entities whose facts appear in text only, never in speech
data_text_docs = 20000         # text-corpus documents (facts and dialogues)
data_dialogues = 130           # spoken training dialogues (~1 hour for tiny)
data_eval_dialogues = 16       # dialogues in each spoken evaluation split
# --- tokenizer (nanosdm/tokenizer.py)
tokenizer_vocab_size = 1024    # SentencePiece BPE pieces, special ids included
tokenizer_extra_text = ""      # comma-separated plain-text files to train the tokenizer on as well
# --- text (nanosdm/textlm.py)
text_n_layer = 4
text_n_head = 4
text_d_model = 256
text_block_size = 128          # tokens per training window (and the longest prompt + answer)
text_dropout = 0.0
text_batch_size = 32
text_grad_accum = 1            # micro-batches per optimizer step
text_max_steps = 600
text_lr = 3e-3
text_warmup = 50
text_weight_decay = 0.1
text_grad_clip = 1.0
text_eval_interval = 100       # steps between validation losses
text_eval_batches = 10
text_ckpt_interval = 100       # steps between checkpoints (a killed run resumes from the last)
# --- units (nanosdm/units.py)
# --- codec (nanosdm/codec.py)
# --- asr (nanosdm/ctc.py)

presets = {
    "tiny": {},
    "small": dict(
        data_entities=1000, data_text_docs=200000, data_dialogues=7000, data_eval_dialogues=200,
    ),
}
# -----------------------------------------------------------------------------


def parse_config(argv):
    """Defaults <- preset <- --key=value, every override checked against the defaults."""
    cfg = {k: v for k, v in globals().items()
           if not k.startswith("_") and isinstance(v, (int, float, str, bool))}
    overrides = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"expected --key=value, got {arg!r}")
        key, value = arg[2:].split("=", 1)
        if key not in cfg:
            raise SystemExit(f"unknown config key --{key} (known: {', '.join(sorted(cfg))})")
        overrides[key] = _convert(key, value, type(cfg[key]))
    name = overrides.get("preset", cfg["preset"])
    if name not in presets:
        raise SystemExit(f"unknown preset {name!r} (known: {', '.join(presets)})")
    cfg.update(presets[name])
    cfg.update(overrides)
    return cfg


def _convert(key, value, kind):
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return kind(value)
    except ValueError:
        raise SystemExit(f"--{key}={value}: expected a {kind.__name__}") from None


# -----------------------------------------------------------------------------
# the stages, in order: each takes the config and returns {metric: number} for report.json

def stage_data(cfg):
    from nanosdm import data
    return data.build(cfg)


def stage_tokenizer(cfg):
    from nanosdm import tokenizer
    return tokenizer.build(cfg)


def stage_text(cfg):
    from nanosdm import textlm
    return textlm.train(cfg)


STAGES = [
    ("data", stage_data),
    ("tokenizer", stage_tokenizer),
    ("text", stage_text),
]


def main(argv):
    cfg = parse_config(argv)
    cfg["device"] = utils.get_device(cfg["device"])
    cfg["data_dir"] = os.path.join(cfg["data_root"], cfg["preset"])
    cfg["out_dir"] = os.path.join(cfg["out_root"], cfg["preset"])
    os.makedirs(cfg["out_dir"], exist_ok=True)
    names = [n for n, _ in STAGES]
    if cfg["stage"] != "all" and cfg["stage"] not in names:
        raise SystemExit(f"unknown stage {cfg['stage']!r} (stages: {', '.join(names)})")
    print(f"nanosdm: preset={cfg['preset']} device={cfg['device']} out={cfg['out_dir']}")
    for name, fn in STAGES:
        done_marker = os.path.join(cfg["out_dir"], f"{name}.done")
        if cfg["stage"] == "all" and os.path.exists(done_marker):
            print(f"[{name}] finished earlier, skipped (--stage={name} reruns it)")
            continue
        if cfg["stage"] not in ("all", name):
            continue
        print(f"[{name}] starting")
        utils.seed_everything(cfg["seed"])
        t0 = time.time()
        metrics = fn(cfg) or {}
        metrics[f"{name}_seconds"] = round(time.time() - t0, 1)
        report = utils.update_report(cfg["out_dir"], metrics)
        with open(done_marker, "w") as f:
            json.dump(metrics, f)
        print(f"[{name}] done in {metrics[f'{name}_seconds']:.1f}s: "
              + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        print(f"[{name}] figures merged into {os.path.join(cfg['out_dir'], 'report.json')} ({len(report)} in all)")


if __name__ == "__main__":
    main(sys.argv[1:])
