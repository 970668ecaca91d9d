"""
Stage units: how the HuBERT-like encoder of units.py is trained, from the first targets to the
final k-means.

    iteration 1   k-means on MFCC frames of the training turns (HuBERT), or by default of the same
                  words re-spoken in one canonical voice (canonical_mfcc)
    encoder       masked prediction of those labels (train_encoder), then a character CTC phase on
                  the transcripts (ctc_finetune, units_ctc_steps; 0 skips it), an echo on some crops
    iteration 2   k-means on the clustered layer: the units (train)

What changes at nano scale (measured on the tiny corpus, see the report): HuBERT's loss counts
masked frames only. Trained for a few hundred steps, that makes the middle layers *worse* than the
MFCCs (PNMI 0.36-0.44 against 0.48): the first thing the model learns is context statistics, and the
frames' own phonetic detail fades. Adding the loss on visible frames (units_unmasked_weight, HuBERT's
1 - alpha) keeps the detail while the context is learned; units_unmasked_weight=0 is the paper's
recipe, for long runs. A random stretch of the mel axis (units_warp) against unchanged targets
teaches the encoder to ignore the speaker's vocal tract length.

Even so, HuBERT's recipe gains little over its teacher in minutes of CPU: a second iteration, 500
targets, other layers or read-outs all stayed at PNMI ~0.50 against 0.47 for MFCC k-means. The
teacher is the limit: MFCC clusters mix who speaks with what is said (within one voice, MFCC k-means
reaches PNMI 0.78). So by default (units_targets="canonical") every training turn is re-spoken by
eSpeak in one canonical voice, aligned to the turn by dynamic time warping, and the canonical
copy's MFCC clusters become the turn's targets (canonical_mfcc). The encoder still hears the turn's
own voice, and must learn to map it onto the canonical one: ContentVec's speaker perturbation, with
the synthesizer making the pairs. This uses the transcripts of the training turns (to synthesize),
never phone labels or timings, and the finished units read audio only. Measured on the tiny corpus:
PNMI 0.57 against 0.47 (units_targets="mfcc", HuBERT's teacher: 0.49).
"""
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from nanosdm import utils
from nanosdm.corpus import audio, realdata
from nanosdm.kmeans import assign, kmeans
from nanosdm.units import (FRAME_RATE, HOP, MEL_HOP, N_MELS, SAMPLE_RATE, HubertEncoder, load_utterances, masked_loss,
                           mfcc_frames, num_frames, span_mask, warp_mel)

# -----------------------------------------------------------------------------
# the training stream: every turn end to end, int16

def mfcc_dataset(stream, chunk_seconds=60):
    """Every frame's MFCC, [frames, 39], of an int16 stream of utterances, in minute-long pieces
    (a few big STFTs instead of thousands of small ones; the deltas blur a frame at each seam)."""
    chunk = chunk_seconds * FRAME_RATE * HOP
    return torch.cat([mfcc_frames(stream[i:i + chunk].float() / 32768.0)
                      for i in tqdm(range(0, len(stream), chunk), desc="units: mfcc", leave=False)])


def get_batch(stream, targets, batch_size, crop_frames, gen):
    """Random crops from the training stream (every utterance end to end, whole frames each):
    (wav [B, crop_frames * 320] float, targets [B, crop_frames])."""
    starts = torch.randint(len(targets) - crop_frames + 1, (batch_size, 1), generator=gen)
    frames = starts + torch.arange(crop_frames)
    samples = starts * HOP + torch.arange(crop_frames * HOP)
    return stream[samples].float() / 32768.0, targets[frames]


@torch.no_grad()
def layer_features(encoder, stream, layer, max_frames, chunk_frames, device, gen):
    """Features of block `layer` for up to max_frames frames of the stream, in random chunks."""
    n_chunks = max(1, len(stream) // (chunk_frames * HOP))   # a short stream: one chunk, all of it
    order = torch.randperm(n_chunks, generator=gen)[:max(1, max_frames // chunk_frames)]
    feats = []
    for c in tqdm(order.tolist(), desc="units: features", leave=False):
        wav = stream[c * chunk_frames * HOP:(c + 1) * chunk_frames * HOP].float()[None] / 32768.0
        with utils.autocast(device):
            feats.append(encoder(encoder.mel(wav.to(device)), layer=layer)[0].float())
    return torch.cat(feats)


# -----------------------------------------------------------------------------
# iteration-1 targets from one canonical voice

CANONICAL = dict(voice="en-us", rate=175, pitch=50)   # the voice every training turn is re-spoken in


def dtw_match(cost):
    """Dynamic time warping: cost [N, M] (numpy) -> for each row, the column a cheapest monotonic
    path through (0, 0) .. (N-1, M-1) with steps (1, 1), (1, 0), (0, 1) matches it to.
    Row by row, D[i, j] = cost[i, j] + min(D[i-1, j-1], D[i-1, j], D[i, j-1]); the dependency on
    D[i, j-1] unrolls into a running minimum over prefix sums, so each row is a few numpy calls."""
    N, M = cost.shape
    D = np.empty((N, M))
    D[0] = np.cumsum(cost[0])
    for i in range(1, N):
        a = cost[i] + np.minimum(D[i - 1], np.concatenate([[np.inf], D[i - 1, :-1]]))  # from above or the diagonal
        s = np.cumsum(cost[i])
        D[i] = s + np.minimum.accumulate(a - s)   # min over k <= j of a[k] + cost[i, k+1 .. j]
    # walk back along the cheapest predecessors; a row the path crosses in several columns is
    # matched to the closest of them (a skipped stretch of the other sequence is a horizontal run)
    match, best = np.zeros(N, dtype=np.int64), np.full(N, np.inf)
    i, j = N - 1, M - 1
    while True:
        if cost[i, j] < best[i]:
            match[i], best[i] = j, cost[i, j]
        if i == 0 and j == 0:
            return match
        if i > 0 and j > 0 and D[i - 1, j - 1] <= min(D[i - 1, j], D[i, j - 1]):
            i, j = i - 1, j - 1
        elif j == 0 or (i > 0 and D[i - 1, j] <= D[i, j - 1]):
            i -= 1
        else:
            j -= 1


def canonical_mfcc(wavs, texts, processes=None):
    """The MFCC frames of every turn's text re-spoken in the CANONICAL voice, time-aligned to the
    turn by DTW: for each frame of each turn, the canonical frame it matches ([frames, 39] in all).
    Clustered, they are iteration-1 targets that depend on what is said and far less on who says it
    (measured on SpokenWorld: MFCC k-means within one voice, PNMI 0.78; across the corpus's voices,
    0.47). The turns' own audio stays the encoder's input, so the encoder must learn to hear every
    voice as the canonical one: ContentVec's idea (a speaker-perturbed copy of the same speech), with
    the synthesizer making the copy. It needs the transcripts of the training turns, never phone
    labels or timings; the encoder and its units see audio only."""
    from nanosdm.corpus import espeak
    jobs = [dict(text=t, **CANONICAL) for t in texts]
    out = []
    for w, (cw, _, _) in zip(tqdm(wavs, desc="units: canonical voice", leave=False), espeak.synthesize_many(jobs, processes)):
        a, b = mfcc_frames(w), mfcc_frames(torch.as_tensor(cw, dtype=torch.float32))
        # match with each side's cepstral mean removed: two voices differ by a roughly constant offset
        out.append(b[dtw_match(torch.cdist(a - a.mean(0), b - b.mean(0)).numpy())])
    return torch.cat(out)


# -----------------------------------------------------------------------------
# HuBERT's second phase, CTC on the transcripts, made the ear's (units_ctc_steps)

def ctc_finetune(model, stream, spans, texts, cfg):
    """Fine-tune the encoder with a character CTC head on its top block, on whole training turns
    (HuBERT is fine-tuned so for ASR; here it is for the clusters that follow, on a block below).
    Masked prediction leaves a name's units voice-dependent: the dual-stream model hears a name in a
    voice it never heard far less often than the recognizer, whose CTC-trained encoder hears it best
    of every input probed. Why the top block and not the clustered one: CTC's output is peaky (a
    character on one frame, blank on the rest), and a head on the clustered layer made its clusters
    follow that (measured on the tiny corpus: PNMI 0.44 against 0.54 without CTC); with the head on
    the blocks above it, the clustered layer keeps its detail (PNMI 0.53, and 0.57 read one 20 ms frame later:
    CTC trained it to hear a little late). stream: int16 turns end to end; spans: each turn's
    (offset, samples). Returns the history of [step, loss]."""
    from nanosdm.ctc import BLANK, VOCAB_SIZE, encode_text, normalize_text
    device, top, steps = cfg["device"], model.config["n_layer"], cfg["units_ctc_steps"]
    labels = [encode_text(normalize_text(t)) for t in texts]
    keep = [i for i, t in enumerate(labels) if 0 < len(t) < num_frames(spans[i][1])]
    head = nn.Linear(model.config["d_model"], VOCAB_SIZE).to(device)
    params = [p for n, p in model.named_parameters() if n.startswith(("conv", "transformer.blocks."))] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["units_ctc_lr"], betas=(0.9, 0.98), weight_decay=cfg["units_weight_decay"])
    history = []
    model.train()
    bar = tqdm(range(steps), desc="units: ctc", dynamic_ncols=True)
    for step in bar:
        gen = torch.Generator().manual_seed(cfg["seed"] * 100019 + step)
        batch = [keep[i] for i in torch.randint(len(keep), (cfg["units_batch_size"],), generator=gen).tolist()]
        n = torch.tensor([num_frames(spans[i][1]) for i in batch])
        wav = torch.zeros(len(batch), int(n.max()) * HOP)
        for j, i in enumerate(batch):   # causal: the zeros after a turn cannot reach its frames
            wav[j, :n[j] * HOP] = stream[spans[i][0]:spans[i][0] + n[j] * HOP].float() / 32768.0
        if cfg["units_echo"] > 0:   # the same perturbations as masked prediction's
            wav = audio.add_echo(wav, n * HOP, gen, cfg["units_echo"], 0.2, 0.8)
        mel = model.mel(wav.to(device))
        if cfg["units_warp"] > 0:
            mel = warp_mel(mel, cfg["units_warp"], gen, cfg["units_warp_knots"])
        for group in opt.param_groups:
            group["lr"] = utils.cosine_lr(step, steps, cfg["units_ctc_lr"], min(cfg["units_warmup"], steps // 10))
        lp = F.log_softmax(head(F.rms_norm(model(mel, layer=top), (model.config["d_model"],))).float(), -1)
        target = [labels[i] for i in batch]
        loss = F.ctc_loss(lp.transpose(0, 1), torch.tensor([c for t in target for c in t]), n,
                          torch.tensor([len(t) for t in target]), blank=BLANK, zero_infinity=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["units_grad_clip"])
        opt.step()
        history.append([step, loss.item()])
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return history


def scrambled_stream(cfg, texts):
    """CTC's turns of random word order (asr.scrambled_clips: the training turns' words and invented
    names, in training voices), as (int16 stream, spans, texts). On the corpus's own turns the encoder
    can learn which name follows "the owner of the" and hear a name it has never heard as a known one;
    here nothing but the sound says what a word is."""
    from nanosdm.asr import scrambled_clips
    from nanosdm.ctc import normalize_text
    vocabulary = sorted({w for t in texts for w in normalize_text(t).split()})
    n = cfg["units_ctc_steps"] * cfg["units_batch_size"] // 2      # each clip drawn about twice
    clips = scrambled_clips(cfg["data_dir"], vocabulary, n, cfg["seed"] + 17, cfg.get("workers") or None)
    clips = [(w[:num_frames(len(w)) * HOP], t) for w, t in clips if num_frames(len(w))]
    spans = list(zip(np.cumsum([0] + [len(w) for w, _ in clips[:-1]]).tolist(), [len(w) for w, _ in clips]))
    return torch.cat([w for w, _ in clips]), spans, [t for _, t in clips]


CTC_DATA = ("turns", "scrambled", "both")     # the values of units_ctc_data


def ctc_speech(cfg, stream, spans, texts):
    """The speech CTC spells (units_ctc_data): the training "turns", the "scrambled" ones, or
    "both" pooled, so that a batch mixes the corpus's phrasing with words in any order."""
    if cfg["units_ctc_data"] == "turns":
        return stream, spans, texts
    if cfg["units_ctc_data"] not in CTC_DATA:
        raise ValueError(f"units_ctc_data={cfg['units_ctc_data']!r}: expected one of {CTC_DATA}")
    s_stream, s_spans, s_texts = scrambled_stream(cfg, texts)
    if cfg["units_ctc_data"] == "scrambled":
        return s_stream, s_spans, s_texts
    return (torch.cat([stream, s_stream]), list(spans) + [(o + len(stream), n) for o, n in s_spans],
            list(texts) + s_texts)


# -----------------------------------------------------------------------------
# the units stage

def train_encoder(model, opt, stream, targets, cfg, step=0, history=None, save=None, stop_step=None):
    """Masked prediction from `step` to units_max_steps; save(step) every units_ckpt_interval steps.
    Returns (step reached, history of [step, loss, masked accuracy])."""
    device, max_steps = cfg["device"], cfg["units_max_steps"]
    crop = int(cfg["units_crop_seconds"] * FRAME_RATE)
    history = [] if history is None else history
    model.train()
    pbar = tqdm(total=max_steps, initial=step, desc="units: train", dynamic_ncols=True)
    while step < max_steps and (stop_step is None or step < stop_step):
        gen = torch.Generator().manual_seed(cfg["seed"] * 100003 + step)   # a resumed run sees the same batches
        wav, tgt = get_batch(stream, targets, cfg["units_batch_size"], crop, gen)
        mask = span_mask(len(wav), crop, cfg["units_mask_prob"], cfg["units_mask_len"], gen)
        if cfg["units_echo"] > 0:   # a room's (or a voice's) echo, against the dry audio's targets
            wav = audio.add_echo(wav, torch.full((len(wav),), wav.shape[1]), gen, cfg["units_echo"], 0.2, 0.8)
        mel = model.mel(wav.to(device))
        if cfg["units_warp"] > 0:
            mel = warp_mel(mel, cfg["units_warp"], gen, cfg["units_warp_knots"])
        tgt, mask = tgt.to(device), mask.to(device)
        mel, tgt, mask = utils.shard((mel, tgt, mask))     # this rank's share of the batch
        for group in opt.param_groups:
            group["lr"] = utils.cosine_lr(step, max_steps, cfg["units_lr"], cfg["units_warmup"])
        with utils.autocast(device):
            logits = model(mel, mask)
        loss = masked_loss(logits, tgt, mask)
        if cfg["units_unmasked_weight"] > 0:
            loss = loss + cfg["units_unmasked_weight"] * masked_loss(logits, tgt, ~mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        utils.all_reduce_grads(model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["units_grad_clip"])
        opt.step()
        acc = utils.mean_over_ranks((logits.argmax(-1) == tgt)[mask].float().mean().item())
        history.append([step, utils.mean_over_ranks(loss.item()), acc])
        step += 1
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss.item():.3f}", masked_acc=f"{acc:.3f}")
        if save is not None and step % cfg["units_ckpt_interval"] == 0 and step < max_steps:
            save(step)
    pbar.close()
    return step, history


def train(cfg, stop_step=None):
    """The units stage: iteration 1 (MFCC k-means), masked prediction, iteration 2 (k-means on a
    middle layer); returns the training figures (unit quality is measured by eval/metrics.py).
    stop_step: stop there as if killed (to test resuming)."""
    device, out_dir, seed = cfg["device"], cfg["out_dir"], cfg["seed"]
    path = os.path.join(out_dir, "units.pt")
    k, k_targets, layer = cfg["units_k"], cfg["units_k_targets"], cfg["units_layer"]
    assert 1 <= layer <= cfg["units_n_layer"], "units_layer counts blocks: 1 .. units_n_layer"
    if cfg["units_ctc_steps"] and cfg["units_ctc_data"] not in CTC_DATA:   # now, not after the first phase
        raise ValueError(f"units_ctc_data={cfg['units_ctc_data']!r}: expected one of {CTC_DATA}")
    t0 = time.time()
    if realdata.is_default(cfg):
        wavs, _, texts = load_utterances(cfg["data_dir"], "train", max_hours=cfg["units_max_train_hours"])
        stream = torch.cat([(w * 32768.0).round().to(torch.int16) for w in wavs])   # int16: half the memory
        spans = list(zip(np.cumsum([0] + [len(w) for w in wavs[:-1]]).tolist(), [len(w) for w in wavs]))
    else:   # the speech_data setting's corpora, drawn once to a file beside the checkpoint, memory-mapped
        stream, spans, texts = realdata.utterance_stream(cfg, os.path.join(out_dir, "units_speech.bin"),
                                                         cfg["units_max_train_hours"], HOP, seed)
        wavs = (stream[o:o + n].float() / 32768.0 for o, n in spans)
    print(f"units: {len(stream) / SAMPLE_RATE / 3600:.2f} h of training speech")

    model = HubertEncoder(k_targets, cfg["units_n_layer"], cfg["units_n_head"], cfg["units_d_model"],
                          cfg["units_proj_dim"], cfg["units_temperature"], causal=cfg["units_causal"],
                          window=cfg["units_window"]).to(device)
    if cfg["units_causal"]:   # the fixed normalisation: the mean log-mel of (up to 10 min of) the training speech
        model.mel_mean.copy_(audio.log_mel(stream[:600 * SAMPLE_RATE].float().to(device) / 32768.0,
                                           n_mels=N_MELS, hop=MEL_HOP).mean(-1))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["units_lr"], betas=(0.9, 0.98),
                            weight_decay=cfg["units_weight_decay"])
    # a partial checkpoint resumes only into the same run (its k-means targets are kept in it too)
    settings = utils.run_settings(cfg, "units")
    step, history, ckpt = 0, [], None
    if os.path.exists(path):
        ckpt = utils.load_checkpoint(path, device)
        changed = utils.changed_settings(ckpt.get("settings", {}), settings)
        if ckpt["finished"] or changed:
            print(f"{path} is finished" if ckpt["finished"] else f"{path} is a run with other settings ({changed})",
                  end=": training from scratch\n")
            ckpt = None
        else:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            step, history = ckpt["step"], ckpt["history"]
            print(f"units: resuming from step {step}")

    # iteration 1: k-means on MFCC frames, of the turns themselves (HuBERT; also the baseline the
    # units are compared with) or of their canonical-voice copies (units_targets="canonical").
    # As in HuBERT they are not standardised: the deltas stay small, so clusters follow the static
    # cepstra and change less from frame to frame (measured: standardised, PNMI 0.46 instead of 0.48)
    mfcc = mfcc_dataset(stream).to(device)
    if cfg["units_targets"] == "canonical":
        source = canonical_mfcc(wavs, texts, cfg.get("workers") or None).to(device)
    elif cfg["units_targets"] == "mfcc":
        source = mfcc
    else:
        raise ValueError(f"units_targets must be 'canonical' or 'mfcc', not {cfg['units_targets']!r}")
    del wavs
    pick = lambda x: x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:cfg["units_kmeans_frames"]].to(device)]
    if ckpt is not None:   # the very same targets as before the interruption
        target_centroids, mfcc_centroids = ckpt["target_centroids"], ckpt["mfcc_centroids"]
    else:
        target_centroids = kmeans(pick(source), k_targets, cfg["units_kmeans_iters"], seed)[0]
        mfcc_centroids = kmeans(pick(mfcc), k, cfg["units_kmeans_iters"], seed)[0]
    targets = assign(source, target_centroids)[0].cpu()
    del mfcc, source

    def save(step, centroids=None):
        utils.save_checkpoint(path, dict(
            config=model.config, model=model.state_dict(), optimizer=opt.state_dict(), step=step,
            history=history, settings=settings, finished=centroids is not None, layer=layer,
            centroids=centroids, target_centroids=target_centroids, mfcc_centroids=mfcc_centroids))

    utils.broadcast_module(model)                      # data parallel: every rank starts from rank 0's weights
    step, history = train_encoder(model, opt, stream, targets, cfg, step, history, save, stop_step)
    utils.report_replicas(model, "units")
    if step < cfg["units_max_steps"]:
        save(step)
        return None
    ctc_history = []
    if cfg["units_ctc_steps"]:   # a run killed in this phase resumes at its start
        save(step)
        ctc_history = ctc_finetune(model, *ctc_speech(cfg, stream, spans, texts), cfg)
    train_seconds = time.time() - t0

    # iteration 2: k-means on the middle layer, on directions (see Units.encode)
    model.eval()
    feats = layer_features(model, stream, layer, cfg["units_kmeans_frames"], 10 * FRAME_RATE, device,
                           torch.Generator().manual_seed(seed + 1))
    save(step, centroids=kmeans(F.normalize(feats, dim=-1), k, cfg["units_kmeans_iters"], seed)[0])
    train_hours = len(targets) / FRAME_RATE / 3600
    del feats, stream, targets

    # unit quality on unseen voices: the stage runner calls eval/metrics.py's evaluate_units_checkpoint next
    return dict(units_k=k, units_layer=layer, units_train_hours=round(train_hours, 3),
                units_train_seconds=round(train_seconds, 1),
                units_train_loss=round(float(np.mean([h[1] for h in history[-50:]])), 4),
                units_train_masked_acc=round(float(np.mean([h[2] for h in history[-50:]])), 4),
                **({"units_ctc_loss": round(float(np.mean([h[1] for h in ctc_history[-50:]])), 4)} if ctc_history else {}))
