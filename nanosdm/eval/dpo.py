"""
Stage `dpo`'s figures (its training is nanosdm/dpo.py's train_stage): spoken QA before (sft) and
after (dpo) with the sft evaluation's protocol, and text retention. Keys:
dpo_qa_speech_<split>_before/_after, dpo_qa_text_<split>_before/_after, dpo_ear_score_<split>_*,
dpo_text_retention(_before); dpo.train's dpo_loss_start, dpo_reward_acc, dpo_margin, dpo_pairs.
"""
import json
import os

from nanosdm import dpo, textlm
from nanosdm.dualstream import load_model
from nanosdm.eval import dialogue


def evaluate(cfg):
    """Spoken QA before (sft) and after (dpo) with the sft evaluation's protocol, and text retention."""
    dev, out = cfg["device"], cfg["out_dir"]
    t = dpo.stage_tools(cfg)
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
    metrics["dpo_text_retention"] = dialogue.retention(model, lm, tok, cfg)["sft_text_retention"]
    report = os.path.join(out, "report.json")
    before = json.load(open(report)).get("sft_text_retention") if os.path.exists(report) else None
    metrics["dpo_text_retention_before"] = before if before is not None else dialogue.retention(sft, lm, tok, cfg)["sft_text_retention"]
    return metrics
