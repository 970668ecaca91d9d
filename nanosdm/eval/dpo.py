"""
Stage `dpo`'s wiring and figures, in two halves the runner calls one after the other. train(): the
sft model's own spoken replies, judged by the fact-free judge of evaluate_dialogue, become
preference pairs for nanosdm/dpo.py (which never imports an evaluation), then DPO. evaluate():
spoken QA before and after with the dual-stream issue's protocol, and text retention. Keys: dpo_qa_speech_<split>_before/_after, dpo_qa_text_<split>_before/_after,
dpo_text_retention, dpo_loss_start, dpo_reward_acc, dpo_margin, dpo_pairs (dpo.train's).
"""
import json
import os
import time

import numpy as np
import torch

from nanosdm import dpo, textlm, utils
from nanosdm.eval import dialogue as ed
from nanosdm.asr import ASR
from nanosdm.codec import Codec
from nanosdm.dualstream import load_model
from nanosdm.corpus.speech import FRAME_S, Streams
from nanosdm.tokenizer import PAD, Tokenizer


def _tools(cfg):
    """What both halves share: the checkpoints they read, the prompts, the judge, spoken QA."""
    dev, out = cfg["device"], cfg["out_dir"]
    codec = Codec.load(os.path.join(out, "codec.pt"), dev)
    asr = ASR.load(os.path.join(out, "asr.pt"), dev)
    tok = Tokenizer.load(os.path.join(out, "tokenizer.model"))
    silence = ed.silence_codes(codec)
    pad_col = np.concatenate([[PAD], silence.numpy(), silence.numpy()])
    wave_frame = 1280                                   # samples per 80 ms frame

    def prompts(split, items):
        """The evaluation's prompts: history, the user's audio from the question on, reply windows."""
        hist, user, starts, ends = ed.qa_batch(Streams(os.path.join(out, "speech"), split), items,
                                               cfg["sft_eval_history"], silence, pad_col)
        return hist, user, [e - s + int(ed.ANSWER_WINDOW_S / FRAME_S) for s, e in zip(starts, ends)]

    def judge(items, windows, text, codes, rows):
        """One verdict per reply (rows: its question): the judge's, the text channel's, the score."""
        wavs = codec.decode(codes.transpose(1, 2).to(dev)).cpu()
        qs, ans = [items[q][1]["text"] for q in rows], [items[q][1]["answer"] for q in rows]
        clips = [wavs[n, :windows[q] * wave_frame] for n, q in enumerate(rows)]
        said = [tok.decode(ed.monologue_parts(text[n, :windows[q]].tolist())[1]) for n, q in enumerate(rows)]
        oks, heard = ed.judge_wavs(asr, clips, qs, ans)
        right = [dict(ed.reply_candidates(q)).get(a) or "" for q, a in zip(qs, ans)]
        return [dict(question=q, answer=a, said=s, heard=h, judge_ok=bool(ok), text_ok=textlm.answer_in(s, a),
                     score=round(dpo.ear_score(asr, c, r), 4))
                for q, a, s, h, ok, c, r in zip(qs, ans, said, heard, oks, clips, right)]

    def spoken_qa(model, split):
        """evaluate_sft's protocol: greedy text, audio sampled as Moshi, the same seed."""
        items = ed.questions(Streams(os.path.join(out, "speech"), split))
        hist, user, windows = prompts(split, items)
        torch.manual_seed(cfg["seed"])
        text, codes = ed.free_run(model, hist.to(dev), user.to(dev), silence.to(dev), (0, 0, ed.AUDIO_TEMP, ed.AUDIO_TOP_K))
        v = judge(items, windows, text.cpu(), codes, list(range(len(items))))
        return {k: round(float(np.mean([r[k] for r in v])), 4) for k in ("judge_ok", "text_ok", "score")}

    return dict(codec=codec, asr=asr, tok=tok, silence=silence, prompts=prompts, judge=judge, spoken_qa=spoken_qa)


def train(cfg):
    """Stage dpo's training: pairs from the sft model's own spoken replies, judged by the fact-free
    judge of evaluate_dialogue (nanosdm/dpo.py never imports an evaluation), then DPO. Under torchrun
    rank 0 collects the pairs and every rank trains on them."""
    dev, out = cfg["device"], cfg["out_dir"]
    t = _tools(cfg)
    prompts, judge, silence = t["prompts"], t["judge"], t["silence"]
    sft = load_model(os.path.join(out, "sft.pt"), dev)
    # the pairs: kept on disk (dpo_pairs.pt, and every verdict readable in dpo_pairs.jsonl)
    path = os.path.join(out, "dpo_pairs.pt")
    info = {k: cfg[k] for k in ("seed", "dpo_questions", "dpo_samples", "dpo_text_temp", "dpo_min_margin",
                                "dpo_max_pairs", "dpo_history", "sft_eval_history")}
    pairs = utils.load_checkpoint(path) if os.path.exists(path) else None
    if (pairs is None or pairs["info"] != info) and utils.is_main():
        t0 = time.time()
        items = ed.questions(Streams(os.path.join(out, "speech"), "train"))
        rng = np.random.default_rng(cfg["seed"])
        items = [items[i] for i in rng.choice(len(items), min(cfg["dpo_questions"], len(items)), replace=False)]
        hist, user, windows = prompts("train", items)
        torch.manual_seed(cfg["seed"])
        temps = (cfg["dpo_text_temp"], 25, ed.AUDIO_TEMP, ed.AUDIO_TOP_K)
        sample = lambda h, u: [t.cpu() for t in ed.free_run(sft, h.to(dev), u.to(dev), silence.to(dev), temps)]
        pairs, records = dpo.collect_pairs(hist, user, windows, sample,
                                           lambda text, codes, rows: judge(items, windows, text, codes, rows.tolist()),
                                           cfg["dpo_samples"], cfg["dpo_min_margin"], cfg["dpo_max_pairs"], cfg["dpo_history"])
        replies = [v for rec in records for v in rec["replies"]]
        info.update(judge_ok=float(np.mean([v["judge_ok"] for v in replies])),
                    text_ok=float(np.mean([v["text_ok"] for v in replies])), seconds=round(time.time() - t0, 1))
        dpo.save_pairs(path, pairs, records, info)
        print(f"dpo: {len(pairs['chosen'])} pairs from {len(replies)} replies to {len(items)} questions in "
              f"{info['seconds']:.0f}s (judged right {info['judge_ok']:.1%}, text channel right {info['text_ok']:.1%})")
    utils.barrier()
    pairs = utils.load_checkpoint(path)
    metrics = dict(dpo_sample_judge_ok=round(pairs["info"]["judge_ok"], 4), dpo_sample_text_ok=round(pairs["info"]["text_ok"], 4),
                   dpo_pair_seconds=pairs["info"]["seconds"])
    trained = dpo.train(cfg, pairs)
    return dict(metrics, **trained) if trained else None


def evaluate(cfg):
    """Spoken QA before (sft) and after (dpo) with the dual-stream issue's protocol, and text retention."""
    dev, out = cfg["device"], cfg["out_dir"]
    t = _tools(cfg)
    spoken_qa, tok = t["spoken_qa"], t["tok"]
    metrics = {}
    splits = [s for s in cfg["dpo_eval_splits"].split(",") if s]
    sft = load_model(os.path.join(out, "sft.pt"), dev)
    for split in splits:
        r = spoken_qa(sft, split)
        metrics.update({f"dpo_qa_speech_{split}_before": r["judge_ok"], f"dpo_qa_text_{split}_before": r["text_ok"],
                        f"dpo_ear_score_{split}_before": r["score"]})
    model = load_model(os.path.join(out, "dpo.pt"), dev)
    for split in splits:
        r = spoken_qa(model, split)
        metrics.update({f"dpo_qa_speech_{split}_after": r["judge_ok"], f"dpo_qa_text_{split}_after": r["text_ok"],
                        f"dpo_ear_score_{split}_after": r["score"]})
    lm = textlm.load_model(os.path.join(out, "text.pt"), dev)
    metrics["dpo_text_retention"] = ed.retention(model, lm, tok, cfg)["sft_text_retention"]
    report = os.path.join(out, "report.json")
    before = json.load(open(report)).get("sft_text_retention") if os.path.exists(report) else None
    metrics["dpo_text_retention_before"] = before if before is not None else ed.retention(sft, lm, tok, cfg)["sft_text_retention"]
    return metrics
