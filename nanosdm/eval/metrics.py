"""
The metrics the results table reports. Each component's file keeps its model and its training; this
one says how the numbers are measured. Later stages add theirs below, under a header of their own.
"""
import copy
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nanosdm import asr, codec, ctc, textlm, units, units_plots, utils
from nanosdm.corpus import audio, realdata, spokenworld
from nanosdm.codec import Codec
from nanosdm.ctc import edit_distance
from nanosdm.kmeans import assign

SAMPLE_RATE = audio.SAMPLE_RATE
STRESS = "\u02c8\u02cc"   # IPA primary and secondary stress marks: not part of the phone's sound


# -----------------------------------------------------------------------------
# discrete ids against the phones spoken, one per 20 ms frame (HuBERT paper, section 4.2)

def frame_phones(phones, n_frames):
    """Phone label of every unit frame (by its centre), stress marks removed, from [[label, start_s,
    end_s], ...]; None where no phone is spoken (a pause)."""
    labels = [None] * n_frames
    for label, start, end in phones:
        first = max(0, math.ceil(start * units.FRAME_RATE - 0.5))     # first frame whose centre >= start
        last = min(n_frames, math.ceil(end * units.FRAME_RATE - 0.5))  # frames with centre < end
        labels[first:last] = ["".join(ch for ch in label if ch not in STRESS)] * max(0, last - first)
    return labels


def unit_quality(unit_ids, phones, n_units, n_phones):
    """PNMI, phone purity and cluster purity of unit ids [N] against phone ids [N], from their
    joint distribution p(phone, unit).
      PNMI           I(phone; unit) / H(phone): the share of the phone's uncertainty a unit removes
      phone purity   accuracy of labelling each unit with its most frequent phone
      cluster purity accuracy of labelling each phone with its most frequent unit"""
    joint = torch.zeros(n_phones, n_units, dtype=torch.float64)
    joint.index_put_((phones.long(), unit_ids.long()), torch.ones(len(unit_ids), dtype=torch.float64), accumulate=True)
    joint /= joint.sum()
    p_phone, p_unit = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    mutual = (joint[nz] * (joint[nz] / (p_phone @ p_unit)[nz]).log()).sum()
    p = p_phone[p_phone > 0]
    h_phone = -(p * p.log()).sum()
    return dict(pnmi=(mutual / h_phone).item(), phone_purity=joint.max(0).values.sum().item(),
                cluster_purity=joint.max(1).values.sum().item())


# -----------------------------------------------------------------------------
# stage `units`

@torch.no_grad()
def evaluate_units(model, mfcc_centroids, wavs, phones):
    """Unit quality of MFCC k-means and of the learned units (model: units.Units) against the phone
    of every frame (frames in pauses left out). Returns (metrics, {system: ids per utterance}, phone
    labels per utterance, phone inventory)."""
    ids = {"mfcc": [], "hubert": []}
    labels = []
    for wav, ph in zip(tqdm(wavs, desc="units: eval", leave=False), phones):
        ids["mfcc"].append(assign(units.mfcc_frames(wav).to(model.device), mfcc_centroids)[0].cpu())
        ids["hubert"].append(model.encode(wav).cpu())
        labels.append(frame_phones(ph, units.num_frames(len(wav))))
    flat = [p for utterance in labels for p in utterance]
    inventory = sorted(set(p for p in flat if p is not None))
    spoken = torch.tensor([p is not None for p in flat])
    phone_ids = torch.tensor([inventory.index(p) for p in flat if p is not None])
    metrics = dict(eval_frames=len(phone_ids), eval_phones=len(inventory))
    for name, per_utterance in ids.items():
        quality = unit_quality(torch.cat(per_utterance)[spoken], phone_ids, len(mfcc_centroids), len(inventory))
        metrics.update({f"{key}_{name}": value for key, value in quality.items()})
        # frames per run of equal units: how much dedup shortens the sequence a language model sees
        runs = sum(len(units.dedup(u)[0]) for u in per_utterance)
        metrics[f"mean_run_{name}"] = sum(len(u) for u in per_utterance) / runs
    return metrics, ids, labels, inventory


# -----------------------------------------------------------------------------
# decoded audio against the original

def mel_distance_db(ref, test, n_mels=80, f_max=None):
    """Mean absolute difference of log-mel spectrograms in dB (floor -80 dB) of two equally long
    signals [T]; n_mels=80: full band; n_mels=40, f_max=4000: to compare with 8 kHz codecs."""
    a, b = (audio.log_mel(x, n_mels=n_mels, f_max=f_max) for x in (ref, test))
    return (a - b).abs().mean().item()


def si_snr_db(ref, test):
    """Scale-invariant signal-to-noise ratio in dB."""
    ref, test = ref - ref.mean(), test - test.mean()
    target = (test @ ref) / (ref @ ref + 1e-12) * ref
    return (10 * torch.log10((target @ target + 1e-12) / ((test - target) @ (test - target) + 1e-12))).item()


def align(out, delay, length):
    """out shifted left by `delay` samples and cut (or padded with silence) to `length`."""
    out = out[delay:delay + length]
    return F.pad(out, (0, length - len(out)))


def best_delay(refs, outs, max_delay=960, step=16, clips=8):
    """A codec's lag (fixed, so found once for every clip): the one of 0 .. max_delay samples in 1 ms
    steps with the least 0-4 kHz log-mel distance on a few clips, then the best SI-SNR within 1 ms."""
    pairs = [(r, audio.log_mel(r, n_mels=40, f_max=4000), o) for r, o in list(zip(refs, outs))[:clips]]
    mel = lambda d: np.mean([(m - audio.log_mel(align(o, d, len(r)), n_mels=40, f_max=4000)).abs().mean().item()
                             for r, m, o in pairs])
    coarse = min(range(0, max_delay + 1, step), key=mel)
    snr = lambda d: np.mean([si_snr_db(r, align(o, d, len(r))) for r, _, o in pairs])
    return max(range(max(0, coarse - step), coarse + step + 1), key=snr)


def codec2_roundtrip(wav, mode):
    """16 kHz float -> 8 kHz int16 -> codec2 (mode 1200, or 700 for 700C) -> 16 kHz float."""
    import pycodec2
    c2 = pycodec2.Codec2(mode)
    n = c2.samples_per_frame()
    x8 = audio.resample(wav.numpy(), SAMPLE_RATE, 8000)
    pcm = (np.clip(np.pad(x8, (0, -len(x8) % n)), -1, 1) * 32767).astype(np.int16)
    out = np.concatenate([c2.decode(c2.encode(pcm[i:i + n])) for i in range(0, len(pcm), n)])
    return torch.from_numpy(audio.resample(out.astype(np.float32) / 32768, 8000, SAMPLE_RATE))


# -----------------------------------------------------------------------------
# discrete codes

def codebook_usage(codes, size):
    """codes [N, K] -> (perplexity / size of each codebook, counts [K, size])."""
    counts = torch.stack([torch.bincount(codes[:, k], minlength=size) for k in range(codes.shape[1])]).float()
    p = counts / counts.sum(1, keepdim=True)
    return ((-(p * torch.log(p.clamp_min(1e-12))).sum(1)).exp() / size).tolist(), counts


def phone_information(codes, phones, size, frame):
    """PNMI (above) of codebooks 0 and 1 against the phones spoken: how much of what was said each
    tells. codes: list of [1, K, frames], a code every `frame` samples; each code is repeated over
    the 20 ms phone frames it spans (four for the codec's 80 ms)."""
    sub = frame // units.HOP
    labels = [frame_phones(p, c.shape[2] * sub) for c, p in zip(codes, phones)]
    inventory = {ph: i for i, ph in enumerate(sorted({ph for ls in labels for ph in ls if ph}))}
    keep = [[i for i, ph in enumerate(ls) if ph] for ls in labels]   # frames inside a phone
    if not inventory:
        return {}
    ph = torch.tensor([inventory[ls[i]] for ls, k in zip(labels, keep) for i in k])
    out = {}
    for level in range(min(2, codes[0].shape[1])):
        ids = torch.cat([c[0, level].cpu().repeat_interleave(sub)[k] for c, k in zip(codes, keep)])
        out[f"codec_pnmi_q{level}"] = unit_quality(ids, ph, size, len(inventory))["pnmi"]
    return out


# -----------------------------------------------------------------------------
# streaming

@torch.no_grad()
def stream_speed(model, wav, threads=1):
    """Times faster than real time of a codec's streaming encode + decode, batch 1, one frame at a
    time. One thread: tensors this small gain nothing from more, and on a busy CPU they lose a lot."""
    frame = round(SAMPLE_RATE / model.frame_rate)                 # samples per step: 1280 for 80 ms
    frames = wav[:len(wav) // frame * frame].view(1, -1, frame)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    for warmup in (True, False):                                   # the first pass warms up the allocator
        enc, dec = model.encoder_state(1), model.decoder_state(1)
        t0 = time.perf_counter()
        for t in range(min(5, frames.shape[1]) if warmup else frames.shape[1]):
            codes, enc = model.encode_step(frames[:, t], enc)
            _, dec = model.decode_step(codes, dec)
    torch.set_num_threads(before)
    return frames.shape[1] * frame / SAMPLE_RATE / (time.perf_counter() - t0)


# -----------------------------------------------------------------------------
# stage `codec`

@torch.no_grad()
def codec_quality(model, clips, teacher=None):
    """Clips through the codec (and codec2, when pycodec2 is installed), delay-aligned: log-mel
    distance, SI-SNR, codebook usage, distillation cosine. -> (metrics, outputs, bitrates,
    aligned outputs, codes, usage, code counts)."""
    codes = [model.encode(w[None]) for w in clips]
    outs, bps = {"codec": [model.decode(c)[0].cpu() for c in codes]}, {"codec": model.bitrate}
    try:
        for mode, name in ((1200, "codec2_1200"), (700, "codec2_700c")):   # the classical anchor (optional)
            outs[name], bps[name] = [codec2_roundtrip(w, mode) for w in clips], mode
    except ImportError:
        print("codec: pycodec2 is not installed, codec2 comparison skipped (pip install pycodec2)")
    size = model.config["codebook_size"]
    metrics = dict(codec_bitrate_bps=model.bitrate, codec_n_q=model.n_q, codec_codebook_size=size)
    aligned = {}
    for name, decoded in outs.items():
        delay = best_delay(clips, decoded)
        aligned[name] = [align(o, delay, len(w)) for w, o in zip(clips, decoded)]
        pairs = list(zip(clips, aligned[name]))
        metrics.update({f"{name}_delay_ms": delay / SAMPLE_RATE * 1000,
                        f"{name}_mel_db": np.mean([mel_distance_db(w, o) for w, o in pairs]),
                        f"{name}_mel_db_0_4k": np.mean([mel_distance_db(w, o, 40, 4000) for w, o in pairs]),
                        f"{name}_si_snr_db": np.mean([si_snr_db(w, o) for w, o in pairs])})
    usage, counts = codebook_usage(torch.cat([c[0].T for c in codes]).cpu(), size)
    metrics.update(codec_usage_min=min(usage), codec_usage_mean=float(np.mean(usage)))
    if teacher is not None:
        metrics["codec_distill_cos"] = float(np.mean([1 - codec.distill_loss(
            model, model.quantizer.decode(c[:, :1]),
            F.pad(w, (0, c.shape[2] * codec.FRAME - len(w)))[None].to(c.device), teacher).item()
            for w, c in zip(clips, codes)]))
    return metrics, outs, bps, aligned, codes, usage, counts


@torch.no_grad()
def evaluate_codec(model, cfg, teacher=None):
    """Unseen-voice user turns through the codec (and codec2, when pycodec2 is installed): log-mel
    distance and SI-SNR after delay alignment, codebook usage and phone information, streaming speed;
    plots and a few wavs."""
    from nanosdm.corpus.spokenworld import SpeechSplit
    turns = [(w, tr) for w, tr in SpeechSplit(cfg["data_dir"], "unseen_voice").utterances(speaker="user")
             if len(w) >= SAMPLE_RATE // 2][:cfg["codec_eval_clips"]]
    clips = [w for w, _ in turns]
    metrics, outs, bps, aligned, codes, usage, counts = codec_quality(model, clips, teacher)
    metrics.update(phone_information(codes, [tr["phones"] for _, tr in turns], model.config["codebook_size"], codec.FRAME))
    cpu_model = copy.deepcopy(model).cpu() if cfg["device"] != "cpu" else model
    metrics["codec_stream_rtf_x"] = stream_speed(cpu_model, torch.cat(clips)[:10 * SAMPLE_RATE], threads=1)
    metrics = {k: round(float(v), 4) for k, v in metrics.items()}

    print(f"codec on {len(clips)} unseen-voice turns ({sum(map(len, clips)) / SAMPLE_RATE:.0f} s), delay-aligned:")
    for name in outs:
        print(f"  {name:12s} {bps[name]:6g} bps  log-mel {metrics[f'{name}_mel_db']:.2f} dB, 0-4 kHz "
              f"{metrics[f'{name}_mel_db_0_4k']:.2f} dB, SI-SNR {metrics[f'{name}_si_snr_db']:.1f} dB, "
              f"delay {metrics[f'{name}_delay_ms']:.0f} ms")
    print(f"  codebook usage (perplexity / size): {' '.join(f'{u:.2f}' for u in usage)}; phone information (PNMI): "
          + ", ".join(f"codebook {k} {metrics.get(f'codec_pnmi_q{k}', float('nan')):.3f}" for k in range(min(2, model.n_q)))
          + f"; streaming {metrics['codec_stream_rtf_x']:.0f}x real time (CPU, 1 thread, batch 1)")
    for i in range(min(2, len(clips))):
        for name, wav in [("original", clips[i])] + [(n, aligned[n][i]) for n in outs]:
            audio.save_wav(os.path.join(cfg["out_dir"], "codec_samples", f"{i}_{name}.wav"), wav)
    codec.plot_spectrograms([clips[0]] + [aligned[n][0] for n in outs], ["original"] + list(outs),
                            os.path.join(cfg["out_dir"], "plots", "codec_spectrograms.png"))
    codec.plot_usage(counts, os.path.join(cfg["out_dir"], "plots", "codec_usage.png"))
    return metrics


# -----------------------------------------------------------------------------
# transcripts: error rates, edit distance summed over a corpus, divided by the reference length

def _error_rate(refs, hyps, split):
    if isinstance(refs, str):
        refs, hyps = [refs], [hyps]
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    # both sides normalised as the recognizer's alphabet is (ctc.py): case and punctuation score nothing
    refs, hyps = [split(ctc.normalize_text(r)) for r in refs], [split(ctc.normalize_text(h)) for h in hyps]
    n = sum(len(r) for r in refs)
    if n == 0:
        raise ValueError("the references are empty: no error rate to compute")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / n


def cer(refs, hyps):
    """Character error rate (spaces count as characters) over a corpus: one string or lists."""
    return _error_rate(refs, hyps, list)


def wer(refs, hyps):
    """Word error rate over a corpus: one string or lists. Can exceed 1 (insertions)."""
    return _error_rate(refs, hyps, str.split)


# -----------------------------------------------------------------------------
# stage `asr`

@torch.no_grad()
def codec_roundtrip(codec, wav):
    """wav [T] -> the clip encoded to tokens and decoded again. Not trimmed to T: a streaming
    codec's output lags its input a little, and its end is padded with silence anyway."""
    dev = next(codec.parameters()).device
    return codec.decode(codec.encode(wav[None].to(dev))).reshape(-1).float().cpu()


def evaluate_asr(model, cfg):
    """Error rates on unseen voices (user turns): greedy (the acoustic model alone), beam search,
    and beam search with the CharLM (the headline figure); on seen voices asking held-out
    phrasings (sentences the LM never read); and through the codec when one has been trained."""
    unseen = asr.load_clips(cfg["data_dir"], "unseen_voice", speaker="user")
    refs, wavs = [t for _, t in unseen], [w.float() / 32768 for w, _ in unseen]
    t0 = time.time()
    hyps = model.transcribe(wavs)
    rtf = (time.time() - t0) / (sum(len(w) for w in wavs) / audio.SAMPLE_RATE)
    metrics = {"asr_cer": round(cer(refs, hyps), 4), "asr_wer": round(wer(refs, hyps), 4),
               "asr_eval_clips": len(unseen), "asr_rtf": round(rtf, 4)}
    metrics["asr_wer_beam"] = round(wer(refs, model.transcribe(wavs, beam=cfg["asr_beam"], use_lm=False)), 4)
    lm_hyps = model.transcribe(wavs, beam=cfg["asr_beam"])
    metrics.update(asr_cer_lm=round(cer(refs, lm_hyps), 4), asr_wer_lm=round(wer(refs, lm_hyps), 4))
    val = asr.load_clips(cfg["data_dir"], "val", speaker="user")
    val_refs, val_wavs = [t for _, t in val], [w.float() / 32768 for w, _ in val]
    metrics["asr_wer_heldout_phrasing"] = round(wer(val_refs, model.transcribe(val_wavs)), 4)
    metrics["asr_wer_heldout_phrasing_lm"] = round(wer(val_refs, model.transcribe(val_wavs, beam=cfg["asr_beam"])), 4)
    bad = [(r, h) for r, h in zip(refs, lm_hyps) if r != h]
    print(f"asr: unseen voices CER {metrics['asr_cer']:.2%} WER {metrics['asr_wer']:.2%} greedy, "
          f"WER {metrics['asr_wer_lm']:.2%} with the LM, over {len(refs)} turns ({len(bad)} not exact with the LM); "
          f"e.g.\n" + "\n".join(f"  ref {r!r}\n  hyp {h!r}" for r, h in bad[:4]))

    codec_path = os.path.join(cfg["out_dir"], "codec.pt")
    if os.path.exists(codec_path):  # the codec stage ran first: how intelligible is its output?
        codec_model = Codec.load(codec_path, cfg["device"])
        decoded = [codec_roundtrip(codec_model, w) for w in tqdm(wavs, desc="codec round trip", leave=False)]
        codec_hyps = model.transcribe(decoded)
        metrics.update(asr_cer_codec=round(cer(refs, codec_hyps), 4), asr_wer_codec=round(wer(refs, codec_hyps), 4),
                       asr_wer_codec_lm=round(wer(refs, model.transcribe(decoded, beam=cfg["asr_beam"])), 4))
        print(f"asr through the codec: CER {metrics['asr_cer_codec']:.2%} WER {metrics['asr_wer_codec']:.2%} "
              f"greedy, {metrics['asr_wer_codec_lm']:.2%} with the LM")
    else:
        print(f"asr: no codec checkpoint at {codec_path}; codec intelligibility not measured")
    asr.plot_posteriors(model, wavs[0], refs[0], os.path.join(cfg["out_dir"], "plots", "asr_posteriors.png"))
    return metrics


# -----------------------------------------------------------------------------
# from checkpoints: the stage runner trains a component, then calls these (components never import this file)

def _codec_and_teacher(cfg):
    model = Codec.load(os.path.join(cfg["out_dir"], "codec.pt"), cfg["device"])
    teacher, units_path = None, os.path.join(cfg["out_dir"], "units.pt")
    if cfg["codec_distill_weight"] > 0 and os.path.exists(units_path):
        teacher = units.Units.load(units_path, cfg["device"]).features
    return model, teacher


def evaluate_codec_checkpoint(cfg):
    model, teacher = _codec_and_teacher(cfg)
    metrics = evaluate_codec(model, cfg, teacher)
    if not realdata.is_default(cfg):
        metrics.update(evaluate_codec_real(cfg, model, teacher))
    return metrics


def evaluate_asr_checkpoint(cfg):
    model = asr.ASR.load(os.path.join(cfg["out_dir"], "asr.pt"), cfg["device"])
    metrics = evaluate_asr(model, cfg)
    if not realdata.is_default(cfg):
        metrics.update(evaluate_asr_real(model, cfg))
    return metrics


def evaluate_text_checkpoint(cfg):
    """The text LM's question answering on held-out phrasings: seen facts and text-only facts
    (greedy answer, cut at EOS)."""
    from nanosdm.tokenizer import Tokenizer
    model = textlm.load_model(os.path.join(cfg["out_dir"], "text.pt"), cfg["device"])
    tok = Tokenizer.load(os.path.join(cfg["out_dir"], "tokenizer.model"))
    items = spokenworld.read_jsonl(os.path.join(cfg["data_dir"], "qa_eval.jsonl"))
    t0 = time.time()
    replies = textlm.answer_questions(model, tok, items, cfg["device"])
    print(f"QA on {len(items)} held-out questions in {time.time() - t0:.1f}s; e.g. "
          f"{items[0]['question']!r} -> {replies[0]!r} (answer {items[0]['answer']!r})")
    return textlm.qa_metrics(items, replies)


# -----------------------------------------------------------------------------
# the user's own corpus (speech_data, realdata.py): the same figures on its held-out part, key + "_real"

REAL_EVAL_CLIPS = 400     # held-out utterances the asr figures read at most (the codec: codec_eval_clips)


def _real(metrics):
    return {f"{k}_real": v for k, v in metrics.items()}


def evaluate_codec_real(cfg, model=None, teacher=None):
    """The codec's figures on held-out utterances of the user's corpus (phone information needs
    phone timings, which a real corpus lacks: not measured)."""
    if model is None:
        model, teacher = _codec_and_teacher(cfg)
    speech = realdata.Speech(cfg)
    clips = [w for w, _ in speech.heldout_wavs(cfg["codec_eval_clips"], SAMPLE_RATE // 2)]
    if not clips:
        print("codec: no held-out utterance of the user's corpus could be read: no _real figures")
        return {}
    metrics, outs, bps = codec_quality(model, clips, teacher)[:3]
    metrics = {k: round(float(v), 4) for k, v in metrics.items()
               if k not in ("codec_bitrate_bps", "codec_n_q", "codec_codebook_size")}   # the same on any data
    metrics["codec_eval_clips"] = len(clips)
    print(f"codec on {len(clips)} held-out utterances of {cfg['speech_eval_data'] or cfg['speech_data']} "
          f"({sum(map(len, clips)) / SAMPLE_RATE:.0f} s); phone information not measured (no phone timings):")
    for name in outs:
        print(f"  {name:12s} {bps[name]:6g} bps  log-mel {metrics[f'{name}_mel_db']:.2f} dB, "
              f"SI-SNR {metrics[f'{name}_si_snr_db']:.1f} dB")
    return _real(metrics)


def evaluate_asr_real(model, cfg):
    """Error rates on held-out utterances of the user's corpus: greedy, beam, beam with the LM,
    and through the codec when one has been trained."""
    speech = realdata.Speech(cfg)
    held = speech.heldout_wavs(REAL_EVAL_CLIPS, asr.MIN_SAMPLES)
    held = [(w, realdata.normalize(it["text"])) for w, it in held if realdata.normalize(it["text"])]
    if not held:
        print("asr: no held-out utterance of the user's corpus could be read: no _real figures")
        return {}
    refs, wavs = [t for _, t in held], [w for w, _ in held]
    hyps, lm_hyps = model.transcribe(wavs), model.transcribe(wavs, beam=cfg["asr_beam"])
    metrics = {"asr_cer": round(cer(refs, hyps), 4), "asr_wer": round(wer(refs, hyps), 4),
               "asr_wer_beam": round(wer(refs, model.transcribe(wavs, beam=cfg["asr_beam"], use_lm=False)), 4),
               "asr_cer_lm": round(cer(refs, lm_hyps), 4), "asr_wer_lm": round(wer(refs, lm_hyps), 4),
               "asr_eval_clips": len(refs)}
    codec_path = os.path.join(cfg["out_dir"], "codec.pt")
    if os.path.exists(codec_path):
        codec_model = Codec.load(codec_path, cfg["device"])
        codec_hyps = model.transcribe([codec_roundtrip(codec_model, w) for w in wavs])
        metrics.update(asr_cer_codec=round(cer(refs, codec_hyps), 4), asr_wer_codec=round(wer(refs, codec_hyps), 4))
    print(f"asr on {len(refs)} held-out utterances of {cfg['speech_eval_data'] or cfg['speech_data']}: "
          f"CER {metrics['asr_cer']:.2%} WER {metrics['asr_wer']:.2%} greedy, WER {metrics['asr_wer_lm']:.2%} "
          f"with the LM; e.g. ref {refs[0]!r} hyp {lm_hyps[0]!r}")
    return _real(metrics)


def evaluate_units_checkpoint(cfg):
    """Unit quality on the user turns of unseen voices, learned units next to MFCC k-means, and
    the two pictures."""
    path = os.path.join(cfg["out_dir"], "units.pt")
    model = units.Units.load(path, cfg["device"])
    mfcc_centroids = utils.load_checkpoint(path)["mfcc_centroids"]
    wavs, phones, _ = units.load_utterances(cfg["data_dir"], "unseen_voice", speaker="user")
    quality, ids, labels, inventory = evaluate_units(model, mfcc_centroids, wavs, phones)
    if not realdata.is_default(cfg):
        print(f"units: PNMI and purity need phone timings, which {cfg['speech_data']} lacks: measured on "
              f"SpokenWorld's unseen voices only (no units_*_real figures)")
    metrics = {f"units_{key}": round(value, 4) for key, value in quality.items()}
    plot_dir = os.path.join(cfg["out_dir"], "plots")
    units_plots.plot_cooccurrence(ids, labels, inventory, cfg["units_k"], metrics, os.path.join(plot_dir, "units_cooccurrence.png"))
    units_plots.plot_utterance(wavs[0], ids["mfcc"][0], ids["hubert"][0], labels[0], os.path.join(plot_dir, "units_utterance.png"))
    return metrics
