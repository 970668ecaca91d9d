"""
Full duplex: the live loop, and the scenarios that test *when* the model speaks.

The live loop is what a deployed full-duplex model does every 80 ms, at batch 1:

    the user's microphone frame --codec encoder--> K codes --model.step--> a text token and
    (one step late, the acoustic delay) the model's K codes --codec decoder--> 80 ms of its voice

sample.py talks through it, and the duplex evaluation plays recorded scenarios into it, the way
Full-Duplex-Bench plays recorded user audio to a model as a live stream (shared/REFERENCE.md §7).

A scenario is a short piece of a SpokenWorld conversation, rendered by the corpus's own generator
in a voice the model never heard (the `unseen_voice` variants), with its event times recorded:

    pause        a question with a pause inside it (after "so." or mid-sentence): wait
    turn         a question, then silence: answer, quickly
    interrupt    the model is answering; the user barges in with a new question: stop, answer it
    backchannel  the model is answering; the user says "uh huh": keep going
    silence      an exchange ends and nobody speaks for 10 s: stay quiet

In `interrupt` and `backchannel` the model must already be talking when the event comes, so its
own channel (text and codes) is given, as if it had said it, up to the event (the "script"); from
there on it runs freely. Everywhere else it runs freely from the first frame.
"""
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from nanosdm.corpus import speech, spokenworld
from nanosdm.codec import FRAME
from nanosdm.corpus.speech import FRAME_S

KINDS = ("pause", "turn", "interrupt", "backchannel", "silence")
LISTEN_S = 4.0          # the scenario goes on this long after the user's last word
SILENCE_S = 10.0        # the silence scenario's quiet stretch
TEMPS = (0.7, 25, 0.8, 250)   # Moshi's sampling: text temperature, top-k; audio temperature, top-k


# -----------------------------------------------------------------------------
# the live loop

class LiveSession:
    """One conversation's live state, stepped one 80 ms frame at a time: the codec encoder's state,
    the model's (KV cache, delay buffers), the codec decoder's. live() below and the server
    (serve.py) both run a conversation through step(), so the offline loop and the live page are
    one code path.

    script_text [F] / script_codes [F, K] (optional): the model's own text tokens and codes for
    its first F frames (undelayed), fed instead of sampled (the scenarios' scripted part)."""

    def __init__(self, model, codec, script_text=None, script_codes=None, temps=TEMPS):
        self.model, self.codec, self.temps = model, codec, temps
        self.dev = next(model.parameters()).device
        self.script_text, self.script_codes = script_text, script_codes
        self.n_script = 0 if script_text is None else len(script_text)
        self.enc, self.dec = codec.encoder_state(1), codec.decoder_state(1)
        self.state = model.new_state(1)
        self.state["seconds"] = dict(temporal=0.0, depth=0.0)      # model.step() adds its two parts
        self.secs = dict(codec_enc=0.0, codec_dec=0.0)
        self.t = 0

    @property
    def seconds(self):
        """Seconds spent so far: codec_enc, temporal, depth, codec_dec."""
        return dict(self.secs, **self.state["seconds"])

    def _forced(self, t):
        """The script's tokens in the delayed column of step t, or (None, None) past the script."""
        model, K, D = self.model, self.model.n_q, max(self.model.delays)
        if not (self.n_script and t < self.n_script + D):
            return None, None
        force_text = torch.tensor([int(self.script_text[t]) if t < self.n_script else -1], device=self.dev)
        force_audio = torch.full((1, K), -1, dtype=torch.long, device=self.dev)
        for k, d in enumerate(model.delays[1:1 + K]):
            if 0 <= t - d < self.n_script:
                force_audio[0, k] = int(self.script_codes[t - d, k])
        return force_text, force_audio

    @torch.no_grad()
    def step(self, frame):
        """One user frame [1280] float, 16 kHz -> dict(t: this step, text: the text token of step t,
        user_codes [K]: the user's codes of frame t, frame: t - max(delays), the model frame this step
        completed (None for the first steps), codes [K] and wav [1280]: that frame's codes and voice
        (None with it))."""
        frame = torch.as_tensor(frame).float().reshape(-1)
        if frame.numel() != FRAME:   # a wrong size would silently shift every later frame: refuse it
            raise ValueError(f"a frame is {FRAME} samples (80 ms at 16 kHz), got {frame.numel()}")
        t, D = self.t, max(self.model.delays)
        tick = time.perf_counter()
        user, self.enc = self.codec.encode_step(frame.to(self.dev)[None], self.enc)
        self.secs["codec_enc"] += time.perf_counter() - tick
        force_text, force_audio = self._forced(t)
        out = self.model.step(self.state, user[:, :, 0], *self.temps, force_text=force_text, force_audio=force_audio)
        result = dict(t=t, text=int(out["text"][0]), user_codes=user[0, :, 0].cpu(), frame=None, codes=None, wav=None)
        if out["audio"] is not None:     # frame t - D is complete: decode it
            tick = time.perf_counter()
            chunk, self.dec = self.codec.decode_step(out["audio"][:, :, None], self.dec)
            self.secs["codec_dec"] += time.perf_counter() - tick
            result.update(frame=t - D, codes=out["audio"][0].cpu(), wav=chunk[0].cpu())
        self.t = t + 1
        return result


@torch.no_grad()
def live(model, codec, user_wav, script_text=None, script_codes=None, temps=TEMPS):
    """Run the model on a user's channel as a live stream, one 80 ms frame at a time, batch 1
    (a LiveSession stepped over the whole wav).

    user_wav [N] float, 16 kHz. script_text [F] / script_codes [F, K] (optional): the model's own
    text tokens and codes for its first F frames (undelayed), fed instead of sampled.
    Returns dict: text [T] token ids, codes [T, K] the model's codes (its last max(delays) frames
    are never completed: zeros), wav [T * 1280] its voice, seconds {codec_enc, temporal, depth,
    codec_dec, total} spent, frames T."""
    K = model.n_q
    wav = F.pad(user_wav.float(), (0, -len(user_wav) % FRAME))
    T = len(wav) // FRAME
    session = LiveSession(model, codec, script_text, script_codes, temps)
    texts, codes, voice = [], torch.zeros(T, K, dtype=torch.long), torch.zeros(T * FRAME)
    t_start = time.perf_counter()
    for t in range(T):
        out = session.step(wav[t * FRAME:(t + 1) * FRAME])
        texts.append(out["text"])
        if out["frame"] is not None:
            f = out["frame"]
            codes[f] = out["codes"]
            voice[f * FRAME:(f + 1) * FRAME] = out["wav"]
    secs = session.seconds
    secs.update(total=time.perf_counter() - t_start)
    return dict(text=texts, codes=codes, wav=voice, seconds=secs, frames=T)


# -----------------------------------------------------------------------------
# where the model speaks: its inner monologue, and the energy of its voice

WORD_S = 0.36           # the assistant's mean word duration (165 words a minute): a text-stream
                        # word has a start (its first token) but no end
VOICED_RMS = 0.02       # a 20 ms window louder than this is voiced (-34 dBFS)
VAD_WIN = 320           # 20 ms at 16 kHz


def monologue_segments(tok, ids):
    """The model's own turns from its text stream (ASSISTANT ... EOS), located in time:
    [dict(start, end, words [(word, start_s)], text)]. A word starts at its first token (the
    first word at the turn's marker, where the training stream puts the word's start); the turn
    ends one word's duration after its last word starts (its EOS says when the turn is over, not
    when the voice stopped)."""
    segs = []
    for tr in speech.read_text_stream(ids):
        if tr["role"] != speech.ASSISTANT:
            continue
        words = []
        for f, i in tr["tokens"]:
            piece = tok.sp.id_to_piece(i)
            if piece.startswith("\u2581") or not words:
                words.append([piece.lstrip("\u2581"), (tr["start"] if not words else f) * FRAME_S])
            else:
                words[-1][0] += piece
        if not words:
            continue
        end = words[-1][1] + WORD_S
        segs.append(dict(start=round(words[0][1], 3), end=round(end, 3), words=[tuple(w) for w in words],
                         text=tok.decode([i for _, i in tr["tokens"]])))
    return segs


def voiced(wav):
    """Boolean [N // 320]: which 20 ms windows of wav are voiced."""
    n = len(wav) // VAD_WIN
    x = torch.as_tensor(wav[:n * VAD_WIN]).float().reshape(n, VAD_WIN)
    return (x.pow(2).mean(1).sqrt() > VOICED_RMS).numpy()


def vad_segments(wav, merge_s=0.5):
    """Voiced stretches of wav, gaps shorter than merge_s merged (Full-Duplex-Bench v1.5 merges a
    model's gaps up to 0.5 s): [dict(start, end, words=None, text=None)]."""
    on = voiced(wav)
    runs, t = [], 0
    while t < len(on):
        if on[t]:
            s = t
            while t < len(on) and on[t]:
                t += 1
            if runs and (s - runs[-1][1]) * VAD_WIN / 16000 < merge_s:
                runs[-1][1] = t
            else:
                runs.append([s, t])
        else:
            t += 1
    return [dict(start=round(s * VAD_WIN / 16000, 3), end=round(e * VAD_WIN / 16000, 3), words=None, text=None)
            for s, e in runs]


# -----------------------------------------------------------------------------
# scenarios, from the corpus's own generator

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


def scenario_script(sc, codec, tok, user_text=True, markers=True):
    """The model's channel for the scenario's script: (text [F], codes [F, K]) or (None, None),
    the same streams the speech stage builds from a dialogue, cut where the model takes over."""
    n_script = int(round(sc["script_s"] / FRAME_S))
    if n_script == 0:
        return None, None
    wav = torch.stack([sc["model"], sc["user"]])
    codes = speech.encode_channels(codec, wav)[spokenworld.ASSISTANT].astype(np.int64)
    text = speech.text_stream(sc["turns"], codes.shape[0], tok, user_text, markers).astype(np.int64)
    return torch.from_numpy(text[:n_script]), torch.from_numpy(codes[:n_script])


def run_scenario(model, codec, tok, sc, temps=TEMPS):
    """A scenario through the live loop -> the live result plus where the model spoke."""
    text, codes = scenario_script(sc, codec, tok)
    out = live(model, codec, sc["user"], text, codes, temps)
    out["said"] = monologue_segments(tok, out["text"])
    out["voiced"] = vad_segments(out["wav"])
    return out


# -----------------------------------------------------------------------------
# the picture

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
