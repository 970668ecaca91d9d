"""Stage `text` on a tiny generated world: first loss, learning, resuming, cached generation, QA."""
import json
import math
import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from nanosdm import textlm, tokenizer, utils
from nanosdm.eval import metrics  # noqa: E402

torch.set_num_threads(1)
NAMES = ["kotan", "lomar", "bixu", "zeppo", "chamil", "tarvo", "nudo", "pifos"]
COLOURS = ["red", "blue", "green", "golden", "white", "black"]


def write_world(data_dir, n_docs=400, seed=0):
    """A tiny world in SpokenWorld's file format: one colour per creature."""
    rng = random.Random(seed)
    colour = {e: rng.choice(COLOURS) for e in NAMES}

    def doc():
        e = rng.choice(NAMES)
        if rng.random() < 0.5:
            return {"turns": [["text", f"the {e} is {colour[e]}. every {e} is {colour[e]}."]]}
        return {"turns": [["user", f"what colour is the {e}?"], ["assistant", f"the {e} is {colour[e]}."]]}

    os.makedirs(data_dir, exist_ok=True)
    for name, n in [("text_train.jsonl", n_docs), ("text_val.jsonl", 40)]:
        with open(os.path.join(data_dir, name), "w") as f:
            f.writelines(json.dumps(doc()) + "\n" for _ in range(n))
    with open(os.path.join(data_dir, "qa_eval.jsonl"), "w") as f:
        for i, e in enumerate(NAMES):
            f.write(json.dumps(dict(kind="fact", question=f"what colour is the {e}?", answer=colour[e],
                                    reply=f"the {e} is {colour[e]}.", text_only=i < 2, context=[])) + "\n")


@pytest.fixture
def cfg(tmp_path):
    cfg = train.parse_config([
        "--text_n_layer=2", "--text_n_head=2", "--text_d_model=64", "--text_block_size=32",
        "--text_batch_size=8", "--text_max_steps=40", "--text_lr=1e-2", "--text_warmup=5",
        "--text_eval_interval=10", "--text_eval_batches=2", "--text_ckpt_interval=10",
        "--tokenizer_vocab_size=100"])
    cfg.update(device="cpu", data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"))
    write_world(cfg["data_dir"])
    utils.seed_everything(cfg["seed"])
    tokenizer.build(cfg)
    return cfg


def test_first_loss_is_near_ln_vocab(cfg):
    tok = tokenizer.Tokenizer.load(os.path.join(cfg["out_dir"], "tokenizer.model"))
    model = textlm.TextLM(tok.vocab_size, 2, 2, 64, 32)
    x = torch.randint(0, tok.vocab_size, (4, 32))
    _, loss = model(x, x)
    # a fresh model spreads its probability evenly over the vocabulary
    assert abs(loss.item() - math.log(tok.vocab_size)) < 0.1


def test_short_training_lowers_the_loss_and_answers(cfg):
    cfg = dict(cfg, text_max_steps=150, text_eval_interval=50, text_ckpt_interval=50)
    figures = textlm.train(cfg)
    assert "text_qa_acc_seen" not in figures           # training figures only: evaluation is apart
    figures.update(metrics.evaluate_text_checkpoint(cfg))
    ckpt = utils.load_checkpoint(os.path.join(cfg["out_dir"], "text.pt"))  # weights_only=True
    first = ckpt["history"]["train"][0][1]
    assert abs(first - math.log(ckpt["config"]["vocab_size"])) < 0.3
    assert figures["text_val_loss"] < first - 2.0, (first, figures)
    assert figures["text_val_loss"] == ckpt["history"]["val"][-1][1] and figures["text_train_loss"] == ckpt["history"]["train"][-1][1]
    assert os.path.exists(os.path.join(cfg["out_dir"], "plots", "text_loss.png"))
    # the model has learned the world's facts, and sample.py-style greedy answers give them
    assert figures["text_qa_acc_seen"] >= 0.5, figures


def test_a_stopped_run_resumes_where_it_stopped(cfg):
    cfg = dict(cfg, text_max_steps=12, text_ckpt_interval=3, text_eval_interval=6)
    straight = dict(cfg, out_dir=cfg["out_dir"] + "_straight")
    os.makedirs(straight["out_dir"])
    os.link(os.path.join(cfg["out_dir"], "tokenizer.model"), os.path.join(straight["out_dir"], "tokenizer.model"))
    textlm.train(straight)
    assert textlm.train(cfg, stop_step=7) == {}  # "killed" after step 7: the last checkpoint is step 6
    path = os.path.join(cfg["out_dir"], "text.pt")
    assert utils.load_checkpoint(path)["step"] == 6
    torch.manual_seed(123)  # resuming must not depend on the global RNG
    textlm.train(cfg)
    a = utils.load_checkpoint(path)
    b = utils.load_checkpoint(os.path.join(straight["out_dir"], "text.pt"))
    assert a["step"] == b["step"] == 12
    for k in b["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert a["history"]["train"] == b["history"]["train"]


def test_a_stopped_run_starts_over_when_a_training_setting_changed(cfg, capsys):
    cfg = dict(cfg, text_max_steps=6, text_ckpt_interval=3, text_eval_interval=6)
    textlm.train(cfg, stop_step=4)                 # "killed" after step 4: the checkpoint is step 3
    path = os.path.join(cfg["out_dir"], "text.pt")
    assert utils.load_checkpoint(path)["settings"]["text_lr"] == cfg["text_lr"]
    capsys.readouterr()
    textlm.train(dict(cfg, text_lr=cfg["text_lr"] / 2))
    assert f"other settings (text_lr={cfg['text_lr']!r} -> {cfg['text_lr'] / 2!r}): training from scratch" in capsys.readouterr().out
    # every step under the new rate, none kept from the old: as a run that never stopped
    straight = dict(cfg, text_lr=cfg["text_lr"] / 2, out_dir=cfg["out_dir"] + "_straight")
    os.makedirs(straight["out_dir"])
    os.link(os.path.join(cfg["out_dir"], "tokenizer.model"), os.path.join(straight["out_dir"], "tokenizer.model"))
    textlm.train(straight)
    a, b = utils.load_checkpoint(path), utils.load_checkpoint(os.path.join(straight["out_dir"], "text.pt"))
    assert a["history"]["train"] == b["history"]["train"] and a["settings"] == b["settings"]


def test_cached_generation_equals_recomputing_the_prefix():
    torch.manual_seed(0)
    model = textlm.TextLM(50, 2, 2, 32, 40).eval()
    idx = torch.randint(8, 50, (3, 6))
    fast = model.generate(idx, 20, temperature=0, stop=-1)
    slow = model.generate(idx, 20, temperature=0, stop=-1, use_cache=False)
    assert fast.shape == (3, 20) and torch.equal(fast, slow)
    torch.manual_seed(1)
    sampled = model.generate(idx, 20, temperature=1.0, top_k=3, stop=-1)
    assert sampled.shape == (3, 20)


def test_answer_check_is_whole_word():
    assert textlm.answer_in("the kotan is red.", "red")
    assert not textlm.answer_in("the kotan is reddish.", "red")
    items = [dict(kind="fact", text_only=False, answer="red"), dict(kind="fact", text_only=True, answer="blue"),
             dict(kind="arith", text_only=False, answer="seven")]
    m = textlm.qa_metrics(items, ["it is red.", "it is red.", "seven."])
    assert m == {"text_qa_acc_seen": 1.0, "text_qa_acc_textonly": 0.0, "text_qa_acc_arith": 1.0}
