"""sample.py: importing it runs nothing; --text against a tiny trained text LM answers the world's fact,
greedily the same every time; a missing checkpoint is named. --wav: the real streaming loop (codec
encoder step, model step, codec decoder step) on a tiny fake run; it writes a stereo reply.wav and
reply.json, and refuses a bad wav by its path."""
import importlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nanosdm.corpus import audio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)  # sample.py and train.py
from test_dualtrain import make_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    cfg = make_tiny_run(root)
    from nanosdm import dualtrain
    dualtrain.train(dict(cfg, align_max_steps=2), "align")
    shutil.copy(os.path.join(cfg["out_dir"], "align.pt"), os.path.join(cfg["out_dir"], "sft.pt"))
    preset_dir = root / "runs" / "tiny"
    shutil.copytree(cfg["out_dir"], preset_dir)
    return root


def sample(run, *args, out_root=None):
    out_root = out_root or run / "runs"
    cmd = [sys.executable, os.path.join(ROOT, "sample.py"), f"--out_root={out_root}", "--device=cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=run, timeout=300)


# -----------------------------------------------------------------------------
# the module and --text

def test_import_parses_nothing_and_runs_nothing(tmp_path, monkeypatch, capsys):
    # a command line that would end the process if parsed, and a chat that would wait on stdin if run
    monkeypatch.setattr(sys, "argv", ["sample.py", "--no_such_flag"])
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("importing sample.py started a chat"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(ROOT)
    monkeypatch.delitem(sys.modules, "sample", raising=False)
    module = importlib.import_module("sample")
    assert capsys.readouterr() == ("", "") and os.listdir(tmp_path) == []
    assert not hasattr(module, "args")                       # no parsed command line left behind
    args = module.parse_args(["--text", "hi", "--temperature=0"])
    assert args.text == "hi" and args.temperature == 0 and args.top_k == 25 and args.out_root == "out"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tokenizer and a text LM trained on test_textlm's tiny world (one colour per creature) until
    it answers every colour question: runs/tiny/{tokenizer.model, text.pt}."""
    import train
    from test_textlm import write_world
    from nanosdm import textlm, tokenizer, utils
    from nanosdm.corpus import spokenworld
    from nanosdm.eval import metrics
    root = tmp_path_factory.mktemp("text")
    cfg = train.parse_config([
        "--text_n_layer=2", "--text_n_head=2", "--text_d_model=64", "--text_block_size=32", "--text_batch_size=8",
        "--text_max_steps=150", "--text_lr=1e-2", "--text_warmup=5", "--text_eval_interval=1000",
        "--text_eval_batches=2", "--text_ckpt_interval=1000", "--tokenizer_vocab_size=100"])
    cfg.update(device="cpu", data_dir=str(root / "data"), out_dir=str(root / "runs" / "tiny"))
    write_world(cfg["data_dir"])
    utils.seed_everything(cfg["seed"])
    tokenizer.build(cfg)
    textlm.train(cfg)
    figures = metrics.evaluate_text_checkpoint(cfg)          # what the stage runner does next
    assert figures["text_qa_acc_seen"] == 1.0, figures       # else the answers below test the training, not sample.py
    facts = {it["question"]: it["reply"] for it in spokenworld.read_jsonl(root / "data" / "qa_eval.jsonl")}
    words = {w.strip(".?") for doc in spokenworld.read_jsonl(root / "data" / "text_train.jsonl")
             for _, text in doc["turns"] for w in text.split()}
    return root, facts, words


def sample_here(out_root, *args):
    """sample.main in this process (a fresh python costs ~3 s on a busy 2-core box); it prints to capsys."""
    import sample as sample_py
    sample_py.main([f"--out_root={out_root}", "--device=cpu", *args])


def test_text_answers_greedily_the_same_every_time(text_run, capsys):
    root, facts, _ = text_run
    question = "what colour is the bixu?"
    p = sample(root, "--text", question, "--temperature=0", "--seed=1")
    assert p.returncode == 0, p.stderr
    # the fact the world holds, exactly as the corpus replies: the prompt is the training format
    assert p.stdout == facts[question] + "\n"
    sample_here(root / "runs", "--text", question, "--temperature=0", "--seed=2")
    assert capsys.readouterr().out == p.stdout                 # greedy: the seed changes nothing


def test_text_samples_words_of_the_vocabulary(text_run, capsys):
    root, _, words = text_run
    sample_here(root / "runs", "--text", "what colour is the kotan?", "--seed=3")   # temperature 0.7, top-k 25
    reply = capsys.readouterr().out.strip().split()
    assert 3 <= len(reply) <= 40 and {w.strip(".?") for w in reply} <= words, reply


def test_a_missing_checkpoint_is_named(text_run, tmp_path):
    root, _, _ = text_run
    p = sample(root, "--text", "hi", out_root=tmp_path)       # nothing trained there
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert str(tmp_path / "tiny" / "tokenizer.model") in p.stderr and "--stage=tokenizer" in p.stderr
    (tmp_path / "tiny").mkdir()
    shutil.copy(root / "runs" / "tiny" / "tokenizer.model", tmp_path / "tiny")    # the tokenizer, no text LM
    text_pt = str(tmp_path / "tiny" / "text.pt")
    with pytest.raises(SystemExit, match=re.escape(f"checkpoint not found: {text_pt}")):
        sample_here(tmp_path, "--text", "hi")
    (tmp_path / "tiny" / "text.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=re.escape(f"cannot read checkpoint {text_pt}") + ".*delete it"):
        sample_here(tmp_path, "--text", "hi")


# -----------------------------------------------------------------------------
# --wav: the streaming loop


def test_wav_in_reply_out(run):
    t = np.arange(16000) / 16000
    audio.save_wav(run / "q.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr=22050)  # another rate
    out = run / "answers" / "r1.wav"
    p = sample(run, "--wav", str(run / "q.wav"), f"--out={out}", "--listen=1.0")
    assert p.returncode == 0, p.stderr
    wav = np.stack([audio.load_wav(out, channel=c).numpy() for c in (0, 1)])
    lead = int(importlib.import_module("sample").LEAD_IN_S * 16000)   # the silence heard before the user's turn
    n_in = lead + int(round(16000 * 16000 / 22050)) + 16000       # the input at 16 kHz, then 1 s of listening
    assert wav.shape[1] == -(-n_in // 1280) * 1280                # 80 ms frames, as streamed
    assert np.abs(wav[1, :lead]).max() == 0                       # channel 1: the user, as heard, after the lead-in
    assert np.abs(wav[1, lead:lead + 10000]).max() > 0.2
    with open(run / "answers" / "r1.json") as f:
        reply = json.load(f)
    assert set(reply) == {"text", "words", "onset_s", "rtf"} and reply["rtf"] > 0
    assert os.path.exists(run / "answers" / "r1.png")


def test_a_bad_wav_is_named(run):
    (run / "empty.wav").write_bytes(b"")
    with pytest.raises(SystemExit) as e:                          # a message: exit status 1, the message on stderr
        sample_here(run / "runs", "--wav", str(run / "empty.wav"))
    assert isinstance(e.value.code, str) and str(run / "empty.wav") in e.value.code and "empty" in e.value.code
