"""
Stage `paradigms`: the survey's ways of teaching a text LM to listen and speak (its §4.1 and §4.4),
each trained from the same text LM (text.pt) for the same budget: paradigms_steps optimizer steps
of paradigms_batch_size examples. eval/paradigms.py measures them on the same questions.

    row                model                                            hears through      speaks through
    moshi              dual stream + depth head (dualstream.py)         units (dual_ear)   the codec's decoder
    mini_omni          dual stream, K parallel heads, Mini-Omni's       units              the codec's decoder
                       delays; batch parallel decoding at inference
    s2s_duplex         dual stream without its text (text=False)        units              the codec's decoder
    flat_chain         flat LM, chain of modality (SpeechGPT; flat.py)  units, deduplicated the unit vocoder
    flat_spirit        flat LM, Spirit-LM: interleaved pre-training     units, deduplicated the unit vocoder
                       (flat_pretrain_frac of the steps), then speech dialogue
    flat_spirit_words  the same pre-training, then the answer's words   units, deduplicated the unit vocoder
                       interleaved with their units
    flat_s2s           flat LM, speech dialogue only, no text           units, deduplicated the unit vocoder
    text_out           LLaMA-Omni's adapter (omni.py), text out only:   the ASR's encoder  eSpeak, the assistant's
                       the survey's "external TTS"                                         voice
    cascade            no training, a reference: ASR -> text LM -> eSpeak (eval/paradigms.py)

Data. The dual-stream rows take sft's recipe (a share sft_text_frac of text-only batches, against
forgetting) from the text LM, with no `align` stage first, on the `speech` stage's dialogue streams
(split train: the corpus's dialogues and the extra ones it renders as codes), with align's learning
rate (a start from the text LM, as align's). The flat rows and text_out train on the spoken exchanges of
the corpus's train split: they need each turn's waveform (units, the ASR's encoder), which the extra
dialogues do not keep. So every row sees the same number of steps of the same batch size; the
dual-stream rows draw their windows from more dialogues.

Size. The dual-stream rows and text_out are within 10% of Mini-Omni's count (tests/test_paradigms.py):
the depth heads of moshi and s2s_duplex are smaller than the default dual stream's (their layers and
width are the paradigms_* keys), text_out's adapter is omni's. The flat rows are the text LM plus
one embedding and one head row per unit and marker, about a quarter smaller: a flat vocabulary
needs no per-codebook tables, and no setting of the shared text LM closes that gap.

Resumable: each row writes its checkpoint as it trains (a killed row resumes from it, utils.resume)
and, once finished, out_dir/paradigm_<name>.json with its training figures: a row with such a file
of the same settings is not trained again.
"""
import json
import os
import time

import torch
import torch.nn.functional as F

from nanosdm import dualstream, dualtrain, flat, utils

DUAL_ROWS = ("moshi", "mini_omni", "s2s_duplex")
FLAT_ROWS = ("flat_chain", "flat_spirit", "flat_spirit_words", "flat_s2s")
ROWS = DUAL_ROWS + FLAT_ROWS + ("text_out", "cascade")
# text_out has no speech decoder (eSpeak speaks); Omni's constructor builds one: the smallest, never trained or run
NO_DECODER = dict(n_units=1, lam=1, dec_layers=1, dec_heads=1, dec_d_model=8)


def rows(cfg):
    """The rows paradigms_rows names ("all": every one), in the table's order."""
    names = ROWS if cfg["paradigms_rows"] == "all" else [r.strip() for r in cfg["paradigms_rows"].split(",")]
    unknown = set(names) - set(ROWS)
    if unknown:
        raise ValueError(f"paradigms_rows: unknown rows {sorted(unknown)} (rows: {', '.join(ROWS)})")
    return [r for r in ROWS if r in names]


def row_settings(cfg, name):
    """What a row's training depends on: the stage's settings (train.py records them) and its name;
    not which other rows run beside it (paradigms_rows)."""
    settings = cfg.get("train_settings") or {k: v for k, v in sorted(cfg.items())
                                             if k.startswith(("paradigms_", "dual_", "sft_", "flat_", "omni_")) or k == "seed"}
    return {**{k: v for k, v in settings.items() if k != "paradigms_rows"}, "paradigms_row": name}


def dual_config(cfg, name):
    """The config that dualtrain.train builds a dual-stream row from: the paradigm, its depth head's size, the budget."""
    paradigm = dict(
        moshi=dict(dual_heads="depth", dual_text=True, dual_depth_layers=cfg["paradigms_moshi_depth_layers"],
                   dual_depth_d_model=cfg["paradigms_moshi_depth_d_model"]),
        mini_omni=dict(dual_heads="parallel", dual_text=True),
        s2s_duplex=dict(dual_heads="depth", dual_text=False, dual_depth_layers=cfg["paradigms_s2s_depth_layers"],
                        dual_depth_d_model=cfg["paradigms_s2s_depth_d_model"]))[name]
    pinned = dict(sft_align_frac=0.0,    # the rows skip align: its single turns are not theirs either,
                  sft_timed_frac=0.0)    # and no timed text: the flat rows have no such batches
    return dict(cfg, **paradigm, sft_max_steps=cfg["paradigms_steps"], sft_batch_size=cfg["paradigms_batch_size"],
                sft_lr=cfg["align_lr"], sft_warmup=cfg["align_warmup"], sft_freeze=False, **pinned,
                train_settings=row_settings(dict(cfg, **pinned), name))


def train_dual(cfg, name, stop_step=None):
    """A dual-stream row: sft's loop (dualtrain.train) from the text LM, out_dir/paradigm_<name>.pt."""
    rc = dual_config(cfg, name)
    m = dualtrain.train(rc, "sft", stop_step, name=f"paradigm_{name}")
    if not m:
        return {}
    model = dualstream.load_model(os.path.join(cfg["out_dir"], f"paradigm_{name}.pt"))
    # every window position is scored: frames seen (each holds 1 + 2K tokens)
    return {f"paradigm_{name}_train_tokens": rc["sft_max_steps"] * rc["sft_batch_size"] * rc["dual_context"],
            f"paradigm_{name}_train_seconds": m["sft_train_seconds"],
            f"paradigm_{name}_train_loss": round(m["sft_audio_loss"] + m.get("sft_text_loss", 0.0), 4),
            f"paradigm_{name}_params": utils.count_params(model)}


def train_flat(cfg):
    """flat.train_rows at the stage's budget: every flat row takes paradigms_steps steps (Spirit-LM's
    rows share their pre-training, and each counts its steps and tokens)."""
    m = flat.train_rows(dict(cfg, flat_max_steps=cfg["paradigms_steps"], flat_batch_size=cfg["paradigms_batch_size"],
                             train_settings=row_settings(cfg, "flat")))
    out = {}
    for name in FLAT_ROWS:
        parts = [name, "flat_pretrain"] if name.startswith("flat_spirit") else [name]
        out[f"paradigm_{name}_train_tokens"] = sum(m[f"{p}_target_tokens"] for p in parts)   # reply ids scored
        out[f"paradigm_{name}_train_seconds"] = round(sum(m[f"{p}_train_seconds"] for p in parts), 1)
        out[f"paradigm_{name}_train_loss"] = m[f"{name}_train_loss"]
        out[f"paradigm_{name}_params"] = m[f"{name}_params"]
    return out


def build_text_out(cfg, lm_config, enc_dim):
    from nanosdm.omni import Omni
    return Omni(lm_config, enc_dim, cfg["omni_k"], cfg["paradigms_text_out_adapter_hidden"], **NO_DECODER)


def text_out_params(model):
    """What text_out trains and runs: the text LM and the adapter (the ASR's encoder is its ear, as
    the units are the others'; the unused decoder is not counted)."""
    return utils.count_params(model.lm) + utils.count_params(model.adapter)


def train_text_out(cfg, stop_step=None):
    """LLaMA-Omni's first stage at the row budget: the speech adapter, and the LM's blocks at
    omni_lm_lr_mult of the rate (omni_tune_lm), on the train split's spoken exchanges -> their
    text answers, the answer alone scored. No synthesized questions (omni_extra_exchanges): the
    flat rows' exchanges, no more."""
    from nanosdm import omni, omni_data
    from nanosdm.asr import ASR
    from nanosdm.tokenizer import Tokenizer
    device, out_dir = cfg["device"], cfg["out_dir"]
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
    lm_ckpt = utils.load_checkpoint(os.path.join(out_dir, "text.pt"), device)
    model = build_text_out(cfg, lm_ckpt["config"], asr.config["d_model"]).to(device)
    model.lm.load_state_dict(lm_ckpt["model"])
    examples = [omni_data.make_example(it, cfg["omni_k"], lm_ckpt["config"]["block_size"])
                for it in omni_data.spoken_exchanges(cfg, "train", asr, tok)]
    groups = omni.adapter_groups(model, cfg)
    B, steps = cfg["paradigms_batch_size"], cfg["paradigms_steps"]
    draw = lambda gen: torch.randint(len(examples), (B,), generator=gen).tolist()

    def loss_fn(gen):
        batch = omni_data.collate([examples[r] for r in draw(gen)], device)
        _, logits = model(batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1), ignore_index=-1)

    path, keys = os.path.join(out_dir, "paradigm_text_out.pt"), row_settings(cfg, "text_out")
    model.train()
    t0 = time.time()
    if not omni._resumable(path, model, keys, device):
        opt = torch.optim.AdamW(groups, lr=cfg["omni_lr"], betas=(0.9, 0.98), weight_decay=0.0)
        if not omni._loop("text_out", steps, cfg, model, opt, cfg["omni_lr"], loss_fn, path, [], {}, stop_step, keys,
                          saved=("lm.", "adapter.")):
            return {}
    history = utils.load_checkpoint(path)["history"]
    # the answer ids scored (and each answer's EOS), batch by batch as the loop drew them
    gen = torch.Generator()
    tokens = 0
    for step in range(steps):
        gen.manual_seed(cfg["seed"] * 1_000_003 + step)
        tokens += sum(len(examples[r]["answer_pos"]) + 1 for r in draw(gen))
    return {"paradigm_text_out_train_tokens": tokens, "paradigm_text_out_params": text_out_params(model),
            "paradigm_text_out_train_seconds": round(time.time() - t0, 1),
            "paradigm_text_out_train_loss": round(sum(v for _, v in history[-50:]) / len(history[-50:]), 4)}


def load_text_out(path, device="cpu"):
    """text_out's model from its checkpoint (the LM and the adapter; the unused decoder as built)."""
    from nanosdm.omni import Omni
    ckpt = utils.load_checkpoint(path, device)
    model = Omni(**ckpt["config"]).to(device)
    model.load_state_dict(ckpt["model"], strict=False)
    return model.eval()


def _row(cfg, name, train_fn):
    """Train one row unless out_dir/paradigm_<name>.json holds its figures for these settings;
    write that file (atomically) once the row is finished. {} if stopped early."""
    path = os.path.join(cfg["out_dir"], f"paradigm_{name}.json")
    settings = row_settings(cfg, name)
    if os.path.exists(path):
        with open(path) as f:
            done = json.load(f)
        if done["settings"] == settings:
            print(f"paradigms: row {name} is finished with these settings, not trained again")
            return done["figures"]
    t0 = time.time()
    figures = train_fn()
    if not figures:
        return {}
    print(f"paradigms: {name} done in {time.time() - t0:.0f}s (data preparation included)")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(settings=settings, figures=figures), f, indent=1)
    os.replace(path + ".tmp", path)
    return figures


def train(cfg):
    """Stage `paradigms`: train every row paradigms_rows names (the cascade trains nothing) at the
    stage's budget; their training figures."""
    names, figures = rows(cfg), {}
    for name in names:
        if name in DUAL_ROWS:
            figures.update(_row(cfg, name, lambda: train_dual(cfg, name)))
        elif name == "text_out":
            figures.update(_row(cfg, name, lambda: train_text_out(cfg)))
    if any(name in FLAT_ROWS for name in names):
        figures.update(_row(cfg, "flat", lambda: train_flat(cfg)))
    figures["paradigms_steps_per_row"] = cfg["paradigms_steps"]
    return figures
