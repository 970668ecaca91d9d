"""
The dual-stream model at inference: the live loop, and the batched free run the evaluations use.

The live loop is what a deployed full-duplex model does every 80 ms, at batch 1:

    the user's microphone frame --codec encoder--> K codes --model.step--> a text token and
    (one step late, the acoustic delay) the model's K codes --codec decoder--> 80 ms of its voice

sample.py talks through it, and the duplex evaluation (nanosdm/eval/duplex.py) plays recorded
scenarios into it, the way Full-Duplex-Bench plays recorded user audio to a model as a live stream.

free_run is the same step at batch B on recorded dialogues: the real dialogue up to a question
(teacher-forced), then the user's audio heard while the model runs freely. The spoken-QA
evaluation and DPO's pair collection both use it, with the prompts questions/qa_batch build.
"""
import time

import numpy as np
import torch
import torch.nn.functional as F

from nanosdm.codec import FRAME, FRAME_S
from nanosdm.corpus.speech import UNITS_PER_FRAME, ear_codes, encode_channels, read_text_stream
from nanosdm.dualstream import ZERO
from nanosdm.tokenizer import ASSISTANT, USER

# Sampling: text temperature and top-k; audio temperature and top-k. The one place they are set:
# sample.py, the evaluations, DPO and the duplex scenarios read them from here. The text is greedy:
# the user's words are written in the same stream, and a name sampled at Moshi's 0.7 / top-k 25 is
# often another creature's (sample.py --say "what colour is the ditum?", tiny: sampled, it heard
# "ladom" and answered "the ladom is purple."; greedy, "the ditum is red."; the evaluations were
# always greedy in text). The audio is greedy too: Moshi's 0.8 with top-k 250 is of 2048 codes (here of
# 256, no top-k at all), and with the answer's words given the judge heard greedy audio right most
# often (bench/bench_sampling.py, docs/results.md: greedy 51.6% of 95 unseen-voice replies, top-k 20
# 48.4%, top-k 5 44.2%, Moshi's 43.2%, temperature 1.0 37.9%; one seed).
TEXT_TEMP, TEXT_TOP_K = 0.0, 25
AUDIO_TEMP, AUDIO_TOP_K = 0.0, 0
TEMPS = (TEXT_TEMP, TEXT_TOP_K, AUDIO_TEMP, AUDIO_TOP_K)
ANSWER_WINDOW_S = 4.0   # after a question the model runs freely this long (evaluations, DPO)


# -----------------------------------------------------------------------------
# the live loop

class LiveSession:
    """One conversation's live state, stepped one 80 ms frame at a time: the codec encoder's state,
    the model's (KV cache, delay buffers), the codec decoder's. live() below and the server
    (serve.py) both run a conversation through step(), so the offline loop and the live page are
    one code path.

    script_text [F] / script_codes [F, K] (optional): the model's own text tokens and codes for
    its first F frames (undelayed), fed instead of sampled (the scenarios' scripted part).
    parallel_decoding: Mini-Omni's batch parallel decoding (free_run says how): two rows a step."""

    def __init__(self, model, codec, script_text=None, script_codes=None, temps=TEMPS, ear=None, parallel_decoding=False):
        self.model, self.codec, self.temps, self.parallel = model, codec, temps, parallel_decoding
        self.ear = None      # the user heard through the causal units (a model trained with dual_ear=units)
        if model.config.get("ear", "codec") == "units":
            if ear is None:
                raise ValueError("this model hears the user through the units: pass ear=Units (load_ear)")
            from nanosdm.units import UnitStream
            self.ear = UnitStream(ear)
        self.dev = next(model.parameters()).device
        self.script_text, self.script_codes = script_text, script_codes
        self.n_script = 0 if script_text is None else len(script_text)
        self.enc, self.dec = codec.encoder_state(1), codec.decoder_state(1)
        self.state = model.new_state(2 if parallel_decoding else 1)
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
        if self.ear is None:
            user, self.enc = self.codec.encode_step(frame.to(self.dev)[None], self.enc)
        else:                # [1, K, 1]: the frame's 4 unit ids, in every group of 4 columns
            ids = self.ear.step(frame).repeat(self.model.n_q // UNITS_PER_FRAME)
            user = ids.to(self.dev)[None, :, None]
        self.secs["codec_enc"] += time.perf_counter() - tick
        force_text, force_audio = self._forced(t)
        if self.parallel:    # the text-only copy hears the same frame, is forced alike (its audio stays ZERO)
            user = user.repeat(2, 1, 1)
            force_text = None if force_text is None else force_text.repeat(2)
            force_audio = None if force_audio is None else force_audio.repeat(2, 1)
        out = self.model.step(self.state, user[:, :, 0], *self.temps, force_text=force_text, force_audio=force_audio,
                              parallel_decoding=self.parallel)
        text = None if out["text"] is None else int(out["text"][0])   # None: a model without text
        result = dict(t=t, text=text, user_codes=user[0, :, 0].cpu(), frame=None, codes=None, wav=None)
        if out["audio"] is not None:     # frame t - D is complete: decode it
            tick = time.perf_counter()
            chunk, self.dec = self.codec.decode_step(out["audio"][:1, :, None], self.dec)
            self.secs["codec_dec"] += time.perf_counter() - tick
            result.update(frame=t - D, codes=out["audio"][0].cpu(), wav=chunk[0].cpu())
        self.t = t + 1
        return result


@torch.no_grad()
def live(model, codec, user_wav, script_text=None, script_codes=None, temps=TEMPS, ear=None):
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
    session = LiveSession(model, codec, script_text, script_codes, temps, ear)
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
# batched inference on recorded dialogues: the evaluations' and DPO's prompts and free run

def questions(streams):
    """[(dialogue index, question turn, the answer turn after it)] for every question with an answer."""
    out = []
    for i, d in enumerate(streams.dialogues):
        turns = d["turns"]
        for j, tr in enumerate(turns):
            if tr["speaker"] == "user" and tr.get("kind") == "question" and tr.get("answer"):
                reply = next((u for u in turns[j + 1:] if u["speaker"] == "assistant"), None)
                out.append((i, tr, reply))
    return out


def silence_codes(codec):
    """The codes of a silent frame (what a quiet channel looks like to the model)."""
    codes = encode_channels(codec, torch.zeros(2, FRAME * 4))
    return torch.from_numpy(codes[0, -1].astype(np.int64))


def user_silence(codec, ear=None):
    """The user's channel while the user is quiet: the codec's codes of silence, or with an ear
    (dual_ear=units) the units' ids of silence."""
    if ear is None:
        return silence_codes(codec)
    return torch.from_numpy(ear_codes(ear, torch.zeros(FRAME * 4), 4, codec.n_q)[-1].astype(np.int64))


def load_ear(model, out_dir, device="cpu"):
    """The units a model hears the user through (trained with dual_ear=units), or None."""
    if model.config.get("ear", "codec") != "units":
        return None
    import os
    from nanosdm.units import Units
    return Units.load(os.path.join(out_dir, "units.pt"), device)


def monologue_parts(ids):
    """Split a text stream into what the model wrote as the user's words and as its own:
    the tokens of its USER ... EOS and ASSISTANT ... EOS turns (speech.read_text_stream)."""
    turns = read_text_stream(ids)
    return ([i for tr in turns if tr["role"] == USER for _, i in tr["tokens"]],
            [i for tr in turns if tr["role"] == ASSISTANT for _, i in tr["tokens"]])


@torch.no_grad()
def free_run(model, history, user, silence, temps, batch_size=64, force_text=None, parallel_decoding=False):
    """history [B, H, S] teacher-forced steps, then user [B, F, K] heard while the model runs freely.
    force_text [B, F] (optional, -1 = the model's own): text tokens written for it, e.g. the
    recording's words, to measure what it does when it has heard (or says) the right words.
    parallel_decoding: Mini-Omni's batch parallel decoding. Each row runs beside a text-only copy of
    itself (the same history and user audio, its own audio ZERO: it only writes), and speaks the
    text that copy writes: the text is not pulled off course by the model's own voice.
    -> (text tokens [B, F] (None for a model without text), the assistant's codes [B, F, K] of those F steps)."""
    D = max(model.delays)
    texts, codes = [], []
    for b in range(0, history.shape[0], batch_size):
        h, u = history[b:b + batch_size], user[b:b + batch_size]
        n = h.shape[0]
        if parallel_decoding:   # rows n.. are the text-only copies
            mute = h.clone()
            mute[..., 1:1 + model.n_q] = ZERO
            h, u = torch.cat([h, mute]), torch.cat([u, u])
        state = model.new_state(h.shape[0])
        if h.shape[1]:
            model.prefill(state, h)
        tx, au = [], []
        for f in range(u.shape[1] + D):
            frame = u[:, f] if f < u.shape[1] else silence.expand(h.shape[0], -1)
            forced = force_text[b:b + batch_size, f].to(frame.device) if force_text is not None and f < u.shape[1] else None
            if forced is not None and parallel_decoding:
                forced = forced.repeat(2)
            out = model.step(state, frame, *temps, force_text=forced, parallel_decoding=parallel_decoding)
            if f < u.shape[1] and out["text"] is not None:
                tx.append(out["text"][:n])
            if out["audio"] is not None:
                au.append(out["audio"])
        if h.shape[1] == 0:  # frames 0 .. F-1 (the first D steps complete no frame)
            au = au[:u.shape[1]]
        else:                # the first output completes frame H - D, part of the history
            au = au[D:D + u.shape[1]]
        texts.append(torch.stack(tx, 1) if tx else None)
        codes.append(torch.stack(au, 1)[:n])
    return (None if texts[0] is None else torch.cat(texts)), torch.cat(codes)


def qa_batch(streams, items, history, silence, pad_col):
    """History [B, history, S] (front-padded with silent steps) and the user's audio [B, F, K]
    from each question's first frame on, F = the longest question + ANSWER_WINDOW_S. After the
    question the user is silent: the recording's own next turn (a backchannel, or a barge-in timed
    to the corpus's answer) would ask the model to stop before it has answered."""
    K = (streams.assistant.shape[1])
    starts = [int(tr["start"] / FRAME_S) for _, tr, _ in items]
    ends = [int(np.ceil(tr["end"] / FRAME_S)) for _, tr, _ in items]
    F = max(e - s for s, e in zip(starts, ends)) + int(ANSWER_WINDOW_S / FRAME_S)
    hist, user = [], []
    for (i, tr, _), s, e in zip(items, starts, ends):
        d = streams.dialogues[i]
        x = streams.window(d["offset"], d["frames"])
        h = x[max(0, s - history):s]
        h = np.concatenate([np.repeat(pad_col[None], history - len(h), 0), h])
        u = x[s:e, 1 + K:]
        u = np.concatenate([u, np.repeat(silence[None].numpy(), F - len(u), 0)])
        hist.append(h)
        user.append(u)
    return torch.from_numpy(np.stack(hist)), torch.from_numpy(np.stack(user)), starts, ends


REPLY_LEAD = 2    # frames before the question's end where a reply clip starts (a reply may start early)


def reply_clips(wavs, q_frames, window):
    """The model's reply only: from just before the question's end to the window's end (the judge
    then trims it to its voiced stretch). Audio before that is the model's channel while the user
    speaks, not its answer."""
    return [wavs[n, max(0, q - REPLY_LEAD) * FRAME:w * FRAME] for n, (q, w) in enumerate(zip(q_frames, window))]
