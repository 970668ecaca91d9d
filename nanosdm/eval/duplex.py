"""
Stage `duplex`: when does the model speak? Full-Duplex-Bench's measurements 
(Lin et al., 2025) on SpokenWorld scenarios (below), and dGSLM's timing statistics of whole conversations.
Like the other evaluations it loads what it scores, and no component imports it.

Every scenario runs through the live loop at batch 1 (a process per core), and the model's
speech is located twice: by its own inner monologue (the words it writes, keys without suffix) and
by the energy of its decoded voice (keys ending in `_vad`). Full-Duplex-Bench's rule decides what
counts as taking the turn: speech spanning under 1 s with at most 3 words is a backchannel, anything
longer a turn (a voiced stretch has no words: it takes the turn if it lasts 1 s).

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
    duplex_rtf, duplex_frame_ms_*  the live loop's cost per 80 ms frame, part by part (the conversations'
                                 run, batch 1, one process)
"""
import json
import multiprocessing as mp
import os
import random

import numpy as np
import torch
from tqdm import tqdm

from nanosdm import judge, live, utils
from nanosdm.codec import FRAME_S, Codec
from nanosdm.corpus import spokenworld
from nanosdm.corpus.audio import SAMPLE_RATE
from nanosdm.dualstream import load_model
from nanosdm.corpus.speech import USER_LAG, encode_channels, read_text_stream, text_stream
from nanosdm.textlm import answer_in
from nanosdm.tokenizer import ASSISTANT, Tokenizer

KINDS = ("pause", "turn", "interrupt", "backchannel", "silence")
LISTEN_S = 4.0          # the scenario goes on this long after the user's last word
SILENCE_S = 10.0        # the silence scenario's quiet stretch
MIN_TURN_S = 1.0             # Full-Duplex-Bench: shorter than this with at most ...
MAX_BACKCHANNEL_WORDS = 3    # ... this many words is not a turn
IPU_GAP_S = 0.2              # dGSLM: an inter-pausal unit is speech bounded by at least this much silence


# -----------------------------------------------------------------------------
# scoring one scenario (segments: dict(start, end, words [(word, start)] or None, text))

# -----------------------------------------------------------------------------
# scenarios, from the corpus's own generator, and where the model speaks in them

WORD_S = 0.36           # the assistant's mean word duration (165 words a minute): a text-stream
                        # word has a start (its first token) but no end


def monologue_segments(tok, ids):
    """The model's own turns from its text stream (ASSISTANT ... EOS), located in time:
    [dict(start, end, words [(word, start_s)], text)]. A word starts at its first token (the
    training stream writes it in the frame where the word's audio starts); the turn
    ends one word's duration after its last word starts (its EOS says when the turn is over, not
    when the voice stopped)."""
    segs = []
    for tr in read_text_stream(ids):
        if tr["role"] != ASSISTANT:
            continue
        words = []
        for f, i in tr["tokens"]:
            piece = tok.sp.id_to_piece(i)
            if piece.startswith("\u2581") or not words:
                words.append([piece.lstrip("\u2581"), f * FRAME_S])
            else:
                words[-1][0] += piece
        if not words:
            continue
        end = words[-1][1] + WORD_S
        segs.append(dict(start=round(words[0][1], 3), end=round(end, 3), words=[tuple(w) for w in words],
                         text=tok.decode([i for _, i in tr["tokens"]])))
    return segs


def vad_segments(wav, merge_s=0.5):
    """Voiced stretches of wav, gaps shorter than merge_s merged (Full-Duplex-Bench v1.5 merges a
    model's gaps up to 0.5 s): [dict(start, end, words=None, text=None)]."""
    on = judge.voiced(wav)
    runs, t = [], 0
    while t < len(on):
        if on[t]:
            s = t
            while t < len(on) and on[t]:
                t += 1
            if runs and (s - runs[-1][1]) * judge.VAD_WIN / SAMPLE_RATE < merge_s:
                runs[-1][1] = t
            else:
                runs.append([s, t])
        else:
            t += 1
    return [dict(start=round(s * judge.VAD_WIN / SAMPLE_RATE, 3), end=round(e * judge.VAD_WIN / SAMPLE_RATE, 3), words=None, text=None)
            for s, e in runs]


def _exchange(rng, world, **timing):
    """One fact question and its reply, with the dialogue planner's fields (no events unless set)."""
    ent = rng.choice(world)
    ex = spokenworld.fact_exchange(rng, ent, rng.choice(list(spokenworld.ATTRIBUTES)), held_out=False)
    plain = dict(preface=None, split=None, pause=0.0, gap=rng.uniform(0.1, 0.4), after=0.0,
                 backchannel=None, interrupt=None, reaction=0.2)
    return dict(ex, **dict(plain, **timing))


def scenario(kind, seed, world, voices):
    """One scenario of a kind: dict(kind, user [N] float 16 kHz, model [N] the corpus's own
    assistant channel (the script is taken from it), turns (the rendered turns, corpus format),
    script_s (seconds of the model's channel given as its own; 0 = none), events {name: s},
    question, answer, voice)."""
    rng = random.Random(seed)
    user = dict(voice=rng.choice(voices), rate=rng.randint(140, 210), pitch=rng.randint(25, 75))
    plan = dict(user=user, user_peak=rng.uniform(0.25, 0.9), lead=rng.uniform(0.3, 0.8))
    if kind == "pause":
        ex = _exchange(rng, world, pause=rng.uniform(0.5, 1.5))
        if rng.random() < 0.5:
            ex["preface"] = rng.choice(spokenworld.PREFACES)
        else:
            n = len(ex["question"].split())
            ex["split"] = rng.randint(2, n - 1)
        plan["exchanges"] = [ex]
    elif kind == "turn":
        plan["exchanges"] = [_exchange(rng, world)]
    elif kind == "interrupt":
        plan["exchanges"] = [_exchange(rng, world, interrupt=rng.uniform(0.35, 0.6)), _exchange(rng, world)]
    elif kind == "backchannel":
        plan["exchanges"] = [_exchange(rng, world, backchannel=rng.choice(spokenworld.BACKCHANNELS),
                                       backchannel_at=rng.uniform(0.3, 0.5))]
    elif kind == "silence":
        plan["exchanges"] = [_exchange(rng, world, after=SILENCE_S)]
    else:
        raise ValueError(f"unknown scenario kind {kind!r}: one of {', '.join(KINDS)}")
    pcm, turns = spokenworld.render_dialogue(plan)
    while kind == "backchannel" and not any(tr["kind"] == "backchannel" for tr in turns):
        plan["exchanges"][0] = _exchange(rng, world, **{k: plan["exchanges"][0][k] for k in ("backchannel", "backchannel_at")})
        pcm, turns = spokenworld.render_dialogue(plan)    # the answer was too short for one (under 1.2 s)
    qs = [tr for tr in turns if tr["speaker"] == "user" and tr["kind"] == "question"]
    replies = [tr for tr in turns if tr["speaker"] == "assistant"]
    events, script_s, asked = {}, 0.0, qs[0]
    if kind == "pause":
        pre = next((tr for tr in turns if tr["kind"] == "preface"), None)
        events["pause_start"], events["pause_end"] = (pre["end"], asked["start"]) if pre else asked["pause"]
        events["turn_end"] = asked["end"]
    elif kind == "turn":
        events["turn_end"] = asked["end"]
    elif kind == "interrupt":
        asked = qs[1]
        events.update(reply_start=replies[0]["start"], interrupt_start=asked["start"], interrupt_end=asked["end"])
        script_s = asked["start"]
    elif kind == "backchannel":
        bc = next(tr for tr in turns if tr["kind"] == "backchannel")
        events.update(reply_start=replies[0]["start"], backchannel_start=bc["start"], backchannel_end=bc["end"],
                      reply_end=replies[0]["end"])
        script_s = bc["start"]
    else:
        events.update(silence_start=replies[0]["end"], silence_end=replies[0]["end"] + SILENCE_S)
        script_s = replies[0]["end"]
    end = max(tr["end"] for tr in turns if tr["speaker"] == "user") + LISTEN_S
    if kind == "silence":
        end = events["silence_end"]
    n = int(end * spokenworld.SAMPLE_RATE)
    x = np.zeros((n, 2), dtype=np.float32)
    m = min(n, len(pcm))
    x[:m] = pcm[:m] / 32768.0
    return dict(kind=kind, user=torch.from_numpy(x[:, spokenworld.USER].copy()), model=torch.from_numpy(x[:, spokenworld.ASSISTANT].copy()),
                turns=turns, script_s=script_s, events={k: round(v, 3) for k, v in events.items()},
                question=asked["text"], answer=asked["answer"], voice=user["voice"])


def scenario_script(sc, codec, tok, user_lag=USER_LAG):
    """The model's channel for the scenario's script: (text [F], codes [F, K]) or (None, None),
    the same streams the speech stage builds from a dialogue, cut where the model takes over."""
    n_script = int(round(sc["script_s"] / FRAME_S))
    if n_script == 0:
        return None, None
    wav = torch.stack([sc["model"], sc["user"]])
    codes = encode_channels(codec, wav)[spokenworld.ASSISTANT].astype(np.int64)
    text = text_stream(sc["turns"], codes.shape[0], tok, user_lag=user_lag).astype(np.int64)
    return torch.from_numpy(text[:n_script]), torch.from_numpy(codes[:n_script])


def run_scenario(model, codec, tok, sc, temps=live.TEMPS, ear=None, user_lag=USER_LAG):
    """A scenario through the live loop -> the live result plus where the model spoke."""
    text, codes = scenario_script(sc, codec, tok, user_lag)
    out = live.live(model, codec, sc["user"], text, codes, temps, ear)
    out["said"] = monologue_segments(tok, out["text"])
    out["voiced"] = vad_segments(out["wav"])
    return out


EVENT_COLOURS = dict(pause="tab:green", turn="tab:red", interrupt="tab:purple", backchannel="tab:olive",
                     silence="tab:gray", reply="tab:blue", reply_end="tab:blue")


def plot_timeline(sc, out, path, verdict=""):
    """Both channels' voices over time, the model's own words on top, the events marked and the
    scripted part (the model's channel given, not generated) shaded."""
    from nanosdm import utils
    user, voice = sc["user"].numpy(), out["wav"].numpy()
    t = lambda x: np.arange(len(x)) / spokenworld.SAMPLE_RATE
    fig, (ax_m, ax_u) = utils.figure(2, 1, figsize=(12, 4.2), sharex=True)
    ax_m.plot(t(voice), voice, lw=0.4, color="tab:blue")
    ax_u.plot(t(user), user, lw=0.4, color="tab:orange")
    for seg in out["voiced"]:
        ax_m.axvspan(seg["start"], seg["end"], ymin=0.02, ymax=0.08, color="tab:blue", alpha=0.6)
    for seg in out["said"]:
        for i, (w, s) in enumerate(seg["words"]):
            ax_m.text(s, 0.85 - 0.22 * (i % 3), w, fontsize=7, color="black")
    if sc["script_s"]:
        ax_m.axvspan(0, sc["script_s"], color="grey", alpha=0.15, label="scripted (given)")
    for name, s in sc["events"].items():
        for ax in (ax_m, ax_u):
            ax.axvline(s, color=EVENT_COLOURS.get(name.split("_")[0], "k"), ls="--", lw=1)
        ax_u.text(s, -0.95, name, fontsize=7, rotation=90, va="bottom")
    for ax, who in ((ax_m, "model (its voice, its words)"), (ax_u, "user")):
        ax.set_ylim(-1, 1)
        ax.set_ylabel(who, fontsize=8)
    ax_u.set_xlabel("seconds")
    ax_m.set_title(f"scenario '{sc['kind']}': {sc['question']!r}" + (f" - {verdict}" if verdict else ""), fontsize=9)
    if sc["script_s"]:
        ax_m.legend(loc="upper right", fontsize=7)
    utils.save_figure(fig, path)




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


def ipu_mask(on, gap_s=IPU_GAP_S, win_s=judge.VAD_WIN / SAMPLE_RATE):
    """Voiced windows with silences shorter than gap_s filled: True inside an IPU."""
    on = np.asarray(on, bool).copy()
    r = runs(~on)
    for s, e in r:
        if s > 0 and e < len(on) and (e - s) * win_s < gap_s:
            on[s:e] = True
    return on


def timing_stats(a, b, win_s=judge.VAD_WIN / SAMPLE_RATE):
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

_JOB = {}   # what the scenario workers read: filled before they fork, so only indices are sent


def _run_scenarios(idx):
    """Worker: the scenarios at these indices -> [(index, said score, voiced score, live result or None)]."""
    j, rows = _JOB, []
    if j["threads"]:
        torch.set_num_threads(j["threads"])
    for i in idx:
        kind, first, sc = j["scenarios"][i]
        torch.manual_seed(j["seed"] * 1000 + i)       # its own seed: the same draws whichever worker runs it
        out = run_scenario(j["model"], j["codec"], j["tok"], sc, j["temps"], j["ear"], j["user_lag"])
        rows.append((i, score(kind, sc["events"], out["said"], sc["answer"]),
                     score(kind, sc["events"], out["voiced"], sc["answer"]), out if first else None))
    return rows


def play_scenarios(scenarios, model, codec, tok, ear, temps, user_lag, seed, workers, chunk=5):
    """[(kind, keep, scenario)] through the live loop -> [(said score, voiced score, the live result
    where keep else None)], in order. Each scenario is a conversation at batch 1, where a model this
    small leaves a core idle: `workers` processes, one thread each (the stage's 200 scenarios on 2
    cores: 335 s in one process, 201 s in two, every figure the same)."""
    _JOB.update(model=model, codec=codec, tok=tok, ear=ear, temps=temps, user_lag=user_lag, seed=seed,
                scenarios=scenarios, threads=1 if workers > 1 else 0)
    chunks = [list(range(i, min(i + chunk, len(scenarios)))) for i in range(0, len(scenarios), chunk)]
    rows = []
    try:
        with tqdm(total=len(scenarios), desc="duplex scenarios", unit="scenario") as bar:
            if workers > 1:
                with mp.get_context("fork").Pool(workers) as pool:
                    for done in pool.imap_unordered(_run_scenarios, chunks):
                        rows += done
                        bar.update(len(done))
            else:
                for part in chunks:
                    rows += _run_scenarios(part)
                    bar.update(len(part))
    finally:
        _JOB.clear()
    return [row[1:] for row in sorted(rows, key=lambda r: r[0])]


def evaluate_duplex(cfg):
    device, out_dir = cfg["device"], cfg["out_dir"]
    torch.set_grad_enabled(False)
    model = load_model(os.path.join(out_dir, f"{cfg['duplex_model']}.pt"), device)
    codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
    ear = live.load_ear(model, out_dir, device)      # the units, for a model that hears through them
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    world = [e for e in spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "world.jsonl")) if not e["text_only"]]
    with open(os.path.join(cfg["data_dir"], "corpus.json")) as f:
        voices = json.load(f)["unseen_voices"]
    temps = live.TEMPS                 # the live loop's sampling, as sample.py talks
    n = cfg["duplex_scenarios"]
    scenarios = [(kind, i == 0, scenario(kind, cfg["seed"] * 1000 + 100 * k + i, world, voices))
                 for k, kind in enumerate(KINDS) for i in range(n)]
    workers = 1 if device != "cpu" else min(cfg.get("workers") or os.cpu_count(), len(scenarios))
    played = play_scenarios(scenarios, model, codec, tok, ear, temps, cfg["dual_user_lag"], cfg["seed"], workers)
    said, voiced = {}, {}
    for (kind, _, sc), (said_score, voiced_score, out) in zip(scenarios, played):
        said.setdefault(kind, []).append(said_score)
        voiced.setdefault(kind, []).append(voiced_score)
        if out is not None:      # each kind's first scenario, drawn
            verdict = ", ".join(f"{a}={b if not isinstance(b, float) else round(b, 2)}" for a, b in said_score.items())
            plot_timeline(sc, out, os.path.join(out_dir, "plots", f"duplex_{kind}.png"), verdict)
    metrics = summarize(said)
    metrics.update(summarize(voiced, "_vad"))
    metrics["duplex_scenarios"] = n
    # whole conversations: the model free-running against recorded users, and the corpus itself;
    # they also time the live loop, batch 1, in this process alone
    sp = spokenworld.SpeechSplit(cfg["data_dir"], "unseen_voice")
    stats = {"model": {}, "corpus": {}}
    torch.manual_seed(cfg["seed"])
    cost = dict(codec_enc=0.0, temporal=0.0, depth=0.0, codec_dec=0.0, total=0.0)
    seconds, frames = 0.0, 0
    for i in tqdm(range(min(cfg["duplex_dialogues"], len(sp))), desc="duplex dialogues", unit="dlg"):
        wav, _ = sp.dialogue(i)
        out = live.live(model, codec, wav[spokenworld.USER], temps=temps, ear=ear)
        for part in cost:
            cost[part] += out["seconds"][part]
        frames += out["frames"]
        corpus = codec.decode(torch.from_numpy(encode_channels(codec, wav)[spokenworld.ASSISTANT].astype(np.int64)).T[None]
                              .to(device))[0].cpu()   # the corpus's voice through the same codec
        user = judge.voiced(wav[spokenworld.USER])
        for who, x in (("model", out["wav"]), ("corpus", corpus)):
            for name, durs in timing_stats(judge.voiced(x), user).items():
                stats[who].setdefault(name, []).extend(durs)
        seconds += wav.shape[1] / spokenworld.SAMPLE_RATE
    for who in stats:
        metrics.update(timing_figures(stats[who], seconds, who))
    if frames:
        metrics["duplex_rtf"] = round(cost["total"] / (frames * FRAME_S), 4)
        for part in ("codec_enc", "temporal", "depth", "codec_dec"):
            metrics[f"duplex_frame_ms_{part}"] = round(1000 * cost[part] / frames, 2)
        metrics["duplex_latency_ms"] = round(1000 * FRAME_S * (1 + max(model.delays)) + 1000 * cost["total"] / frames)
    plot_timing(metrics, os.path.join(out_dir, "plots", "duplex_timing.png"))
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
