"""
Stage `duplex`: when does the model speak? Full-Duplex-Bench's measurements (shared/REFERENCE.md
§7) on SpokenWorld scenarios (live.py), and dGSLM's timing statistics of whole conversations.
Like the other evaluations it loads what it scores, and no component imports it.

Every scenario runs through the live loop at batch 1, and the model's speech is located twice:
by its own inner monologue (the words it writes, keys without suffix) and by the energy of its
decoded voice (keys ending in `_vad`). Full-Duplex-Bench's rule decides what counts as taking the
turn: speech spanning under 1 s with at most 3 words is a backchannel, anything longer a turn (a
voiced stretch has no words: it takes the turn if it lasts 1 s).

    duplex_pause_tor             a pause inside the user's question: did the model take the turn? (lower is better)
    duplex_turn_tor              the question ended: did it take the turn? (higher is better)
    duplex_turn_latency_ms       median, end of the question to the model's first word
    duplex_interrupt_yield       interrupted mid-answer: did it stop before the user finished?
    duplex_interrupt_stop_ms     median, how long it kept talking over the user
    duplex_interrupt_answer_acc  did its next turn answer the new question? (its words)
    duplex_backchannel_continue  "uh huh" mid-answer: did it keep going?
    duplex_silence_false_start   10 s of silence after an exchange: did it start a turn?
    duplex_timing_*              IPUs, pauses, gaps, overlaps per minute and their mean length, in
                                 free-running conversations (_model) and in the corpus (_corpus)
    duplex_rtf, duplex_frame_ms_*  the live loop's cost per 80 ms frame, part by part
"""
import json
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from nanosdm import live, utils
from nanosdm.corpus import spokenworld
from nanosdm.codec import Codec
from nanosdm.dualstream import load_model
from nanosdm.corpus.speech import FRAME_S, encode_channels
from nanosdm.textlm import answer_in
from nanosdm.tokenizer import Tokenizer

MIN_TURN_S = 1.0             # Full-Duplex-Bench: shorter than this with at most ...
MAX_BACKCHANNEL_WORDS = 3    # ... this many words is not a turn
IPU_GAP_S = 0.2              # dGSLM: an inter-pausal unit is speech bounded by at least this much silence


# -----------------------------------------------------------------------------
# scoring one scenario (segments: dict(start, end, words [(word, start)] or None, text))

def takes_turn(seg):
    """Full-Duplex-Bench's rule. A voiced stretch (words None) only has its length."""
    if seg["words"] is None:
        return seg["end"] - seg["start"] >= MIN_TURN_S
    if not seg["words"]:
        return False
    return not (seg["end"] - seg["start"] < MIN_TURN_S and len(seg["words"]) <= MAX_BACKCHANNEL_WORDS)


def score(kind, events, segs, answer=None):
    """One scenario's outcome from where the model spoke: a dict of the figures its kind measures.
    `answer` (the asked value) is checked in the model's words, where it has words."""
    turns = [s for s in segs if takes_turn(s)]
    ev = events
    if kind == "pause":   # a turn held in the pause: begun before the user finished, still on when it began
        return dict(took=any(s["start"] < ev["turn_end"] - FRAME_S and s["end"] > ev["pause_start"] for s in turns))
    if kind == "turn":
        first = next((s for s in turns if s["start"] >= ev["turn_end"] - FRAME_S), None)
        out = dict(took=first is not None, early=any(s["start"] < ev["turn_end"] - FRAME_S for s in turns),
                   latency=None if first is None else first["start"] - ev["turn_end"])
        if first is not None and first["text"] is not None:
            out["correct"] = answer_in(first["text"], answer)
        return out
    if kind == "interrupt":
        on = ev["interrupt_start"]
        cur = next((s for s in segs if s["start"] <= on < s["end"]), None)    # what it was saying
        stop = 0.0 if cur is None else cur["end"] - on
        out = dict(yielded=stop <= ev["interrupt_end"] - on, stop=stop)
        if segs and segs[0]["text"] is not None:
            nxt = next((s for s in turns if s is not cur and s["start"] >= on), None)
            out["correct"] = nxt is not None and answer_in(nxt["text"], answer)
        return out
    if kind == "backchannel":
        on = ev["backchannel_start"]
        cur = next((s for s in segs if s["start"] <= on < s["end"]), None)
        went_on = cur is not None and cur["end"] > ev["backchannel_end"]
        if cur is not None and cur["words"] is not None:   # and a word said after the backchannel began
            went_on = went_on and any(s >= on for _, s in cur["words"])
        return dict(kept=went_on)
    if kind == "silence":
        return dict(false_start=any(s["start"] >= ev["silence_start"] for s in turns))
    raise ValueError(f"unknown scenario kind {kind!r}")


def summarize(outcomes, suffix=""):
    """The report's figures from per-kind lists of score() outcomes."""
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else -1
    ms = lambda xs: round(1000 * float(np.median(xs))) if xs else -1
    o = outcomes
    m = {"duplex_pause_tor": mean([r["took"] for r in o.get("pause", [])]),
         "duplex_turn_tor": mean([r["took"] for r in o.get("turn", [])]),
         "duplex_turn_latency_ms": ms([r["latency"] for r in o.get("turn", []) if r["took"]]),
         "duplex_turn_early": mean([r["early"] for r in o.get("turn", [])]),
         "duplex_interrupt_yield": mean([r["yielded"] for r in o.get("interrupt", [])]),
         "duplex_interrupt_stop_ms": ms([r["stop"] for r in o.get("interrupt", [])]),
         "duplex_backchannel_continue": mean([r["kept"] for r in o.get("backchannel", [])]),
         "duplex_silence_false_start": mean([r["false_start"] for r in o.get("silence", [])])}
    if not suffix:   # only words can be right
        m["duplex_turn_answer_acc"] = mean([r.get("correct", False) for r in o.get("turn", [])])
        m["duplex_interrupt_answer_acc"] = mean([r.get("correct", False) for r in o.get("interrupt", [])])
    return {k + suffix: v for k, v in m.items()}


# -----------------------------------------------------------------------------
# dGSLM's timing statistics

def runs(mask):
    """[(start, end)] index ranges where mask is True."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.diff(m.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def ipu_mask(on, gap_s=IPU_GAP_S, win_s=live.VAD_WIN / spokenworld.SAMPLE_RATE):
    """Voiced windows with silences shorter than gap_s filled: True inside an IPU."""
    on = np.asarray(on, bool).copy()
    r = runs(~on)
    for s, e in r:
        if s > 0 and e < len(on) and (e - s) * win_s < gap_s:
            on[s:e] = True
    return on


def timing_stats(a, b, win_s=live.VAD_WIN / spokenworld.SAMPLE_RATE):
    """Voiced masks (20 ms windows) of the speaker measured (a: the model, or the corpus's
    assistant) and of the user (b, the same recording either way) -> {ipu, pause, gap, overlap:
    [durations in s]}. IPU: a's speech bounded by >= 0.2 s of silence; pause: silence between two
    of a's IPUs while the user is silent too; gap: silence where the floor passes from one speaker
    to the other; overlap: both speak."""
    n = min(len(a), len(b))
    A, B = ipu_mask(a[:n]), ipu_mask(b[:n])
    out = dict(ipu=[(e - s) * win_s for s, e in runs(A)], overlap=[(e - s) * win_s for s, e in runs(A & B)],
               pause=[], gap=[])
    for s, e in runs(~A & ~B):
        if s == 0 or e >= n:
            continue   # before the first word or after the last: not between two IPUs
        before, after = {k for k, x in (("a", A), ("b", B)) if x[s - 1]}, {k for k, x in (("a", A), ("b", B)) if x[e]}
        if "a" in before & after:
            out["pause"].append((e - s) * win_s)
        elif not before & after:
            out["gap"].append((e - s) * win_s)
    return out


def timing_figures(stats, seconds, who):
    m = {}
    for name, durs in stats.items():
        m[f"duplex_timing_{name}_per_min_{who}"] = round(len(durs) / (seconds / 60), 2)
        m[f"duplex_timing_{name}_mean_s_{who}"] = round(float(np.mean(durs)), 3) if durs else 0.0
    return m


def plot_timing(metrics, path):
    fig, axes = utils.figure(1, 2, figsize=(9, 3.4))
    names = ("ipu", "pause", "gap", "overlap")
    x = np.arange(len(names))
    for ax, what, label in ((axes[0], "per_min", "count per minute"), (axes[1], "mean_s", "mean duration (s)")):
        for j, who in enumerate(("corpus", "model")):
            ax.bar(x + 0.38 * (j - 0.5), [metrics[f"duplex_timing_{n}_{what}_{who}"] for n in names], 0.38, label=who)
        ax.set_xticks(x, names)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle("dGSLM timing statistics: free-running conversations against the corpus's own", fontsize=9)
    utils.save_figure(fig, path)


# -----------------------------------------------------------------------------
# the stage

def evaluate_duplex(cfg):
    device, out_dir = cfg["device"], cfg["out_dir"]
    torch.set_grad_enabled(False)
    model = load_model(os.path.join(out_dir, f"{cfg['duplex_model']}.pt"), device)
    codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    world = [e for e in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl")) if not e["text_only"]]
    with open(os.path.join(cfg["data_dir"], "corpus.json")) as f:
        voices = json.load(f)["unseen_voices"]
    temps = (cfg["duplex_text_temperature"], cfg["duplex_text_top_k"], cfg["duplex_audio_temperature"],
             cfg["duplex_audio_top_k"])
    torch.manual_seed(cfg["seed"])
    t0 = time.time()
    said, voiced = {}, {}
    cost = dict(codec_enc=0.0, temporal=0.0, depth=0.0, codec_dec=0.0, total=0.0)
    frames = 0
    n = cfg["duplex_scenarios"]
    for k, kind in enumerate(live.KINDS):
        for i in tqdm(range(n), desc=f"duplex {kind}", unit="scenario"):
            sc = live.scenario(kind, cfg["seed"] * 1000 + 100 * k + i, world, voices)
            out = live.run_scenario(model, codec, tok, sc, temps)
            said.setdefault(kind, []).append(score(kind, sc["events"], out["said"], sc["answer"]))
            voiced.setdefault(kind, []).append(score(kind, sc["events"], out["voiced"], sc["answer"]))
            for part in cost:
                cost[part] += out["seconds"][part]
            frames += out["frames"]
            if i == 0:
                verdict = ", ".join(f"{a}={b if not isinstance(b, float) else round(b, 2)}" for a, b in said[kind][0].items())
                live.plot_timeline(sc, out, os.path.join(out_dir, "plots", f"duplex_{kind}.png"), verdict)
    metrics = summarize(said)
    metrics.update(summarize(voiced, "_vad"))
    metrics["duplex_scenarios"] = n
    # the live loop's cost, batch 1
    metrics["duplex_rtf"] = round(cost["total"] / (frames * FRAME_S), 4)
    for part in ("codec_enc", "temporal", "depth", "codec_dec"):
        metrics[f"duplex_frame_ms_{part}"] = round(1000 * cost[part] / frames, 2)
    metrics["duplex_latency_ms"] = round(1000 * FRAME_S * (1 + max(model.delays)) + 1000 * cost["total"] / frames)
    # whole conversations: the model free-running against recorded users, and the corpus itself
    sp = spokenworld.SpeechSplit(cfg["data_dir"], "unseen_voice")
    stats = {"model": {}, "corpus": {}}
    seconds = 0.0
    for i in tqdm(range(min(cfg["duplex_dialogues"], len(sp))), desc="duplex dialogues", unit="dlg"):
        wav, _ = sp.dialogue(i)
        out = live.live(model, codec, wav[spokenworld.USER], temps=temps)
        corpus = codec.decode(torch.from_numpy(encode_channels(codec, wav)[spokenworld.ASSISTANT].astype(np.int64)).T[None]
                              .to(device))[0].cpu()   # the corpus's voice through the same codec
        user = live.voiced(wav[spokenworld.USER])
        for who, x in (("model", out["wav"]), ("corpus", corpus)):
            for name, durs in timing_stats(live.voiced(x), user).items():
                stats[who].setdefault(name, []).extend(durs)
        seconds += wav.shape[1] / spokenworld.SAMPLE_RATE
    for who in stats:
        metrics.update(timing_figures(stats[who], seconds, who))
    plot_timing(metrics, os.path.join(out_dir, "plots", "duplex_timing.png"))
    metrics["duplex_seconds"] = round(time.time() - t0, 1)
    torch.set_grad_enabled(True)
    print_table(metrics)
    return metrics


TARGETS = [("duplex_pause_tor", "pause TOR (lower better)", "<= 0.2", 0.98),
           ("duplex_turn_tor", "turn-end TOR", ">= 0.95", 0.94),
           ("duplex_turn_latency_ms", "turn-end latency, ms", "<= 300", 265),
           ("duplex_interrupt_yield", "interruption yield", ">= 0.95", 1.0),
           ("duplex_interrupt_stop_ms", "interruption stop, ms", "<= 300", 257),
           ("duplex_interrupt_answer_acc", "answers the interruption", "", None),
           ("duplex_backchannel_continue", "backchannel: keeps talking", ">= 0.9", None),
           ("duplex_silence_false_start", "silence: false starts", "<= 0.05", None),
           ("duplex_rtf", "real-time factor, batch 1", "<= 0.5", None)]


def print_table(m):
    print(f"{'figure':30s} {'words':>8s} {'voice':>8s} {'goal':>8s} {'Moshi':>7s}")
    for key, name, goal, moshi in TARGETS:
        print(f"{name:30s} {m.get(key, ''):>8} {m.get(key + '_vad', ''):>8} {goal:>8s} {'' if moshi is None else moshi:>7}")
