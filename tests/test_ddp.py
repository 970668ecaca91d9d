"""Data parallel on torchrun: 2 CPU processes with gloo train the text stage for a few steps, end with
identical weights, and take the steps one process takes on the same global batch."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import train  # noqa: E402
from nanosdm import tokenizer, utils  # noqa: E402
from test_textlm import write_world  # noqa: E402

ARGS = ["--stage=text", "--device=cpu", "--text_n_layer=2", "--text_n_head=2", "--text_d_model=64",
        "--text_block_size=32", "--text_batch_size=8", "--text_max_steps=6", "--text_warmup=2",
        "--text_eval_interval=3", "--text_eval_batches=1", "--text_ckpt_interval=3", "--tokenizer_vocab_size=100"]


def run_dir(root):
    """A run directory with the tiny world and its tokenizer, ready for the text stage."""
    cfg = train.parse_config(["--tokenizer_vocab_size=100"])
    cfg.update(data_dir=str(root / "data" / "tiny"), out_dir=str(root / "out" / "tiny"))
    write_world(cfg["data_dir"], n_docs=120)
    tokenizer.build(cfg)
    return [f"--data_root={root / 'data'}", f"--out_root={root / 'out'}"]


def test_two_gloo_ranks_match_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    cmd = [os.path.join(ROOT, "train.py"), *ARGS]
    single = subprocess.run([sys.executable, *cmd, *run_dir(one)], capture_output=True, text=True, env=env, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *cmd, *run_dir(two)], capture_output=True, text=True, env=env, timeout=120)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    out = ddp.stdout + ddp.stderr
    assert "2 ranks (torchrun)" in out
    for r in (0, 1):                                   # both ranks end with rank 0's weights, exactly
        assert f"ddp rank {r}: text weights equal rank 0's (max difference 0)" in out, out[-3000:]
    a = utils.load_checkpoint(str(one / "out" / "tiny" / "text.pt"))
    b = utils.load_checkpoint(str(two / "out" / "tiny" / "text.pt"))
    assert a["step"] == b["step"] == 6
    # the same global batch of 8 (4 per rank): the same losses and weights, up to float rounding
    la, lb = [l for _, l in a["history"]["train"]], [l for _, l in b["history"]["train"]]
    assert la == pytest.approx(lb, rel=1e-3, abs=1e-3) and la[0] > la[-1]
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-4), k
    assert (two / "out" / "tiny" / "text.done").exists() and not (two / "out" / "tiny" / "text.pt.tmp1").exists()


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(monkeypatch):
    monkeypatch.setattr(utils, "world_size", lambda: 3)
    with pytest.raises(ValueError, match="a batch of 8 does not split evenly over 3 ranks"):
        utils.shard(torch.zeros(8, 2))
    monkeypatch.setattr(utils, "rank", lambda: 2)
    assert utils.shard(torch.arange(9)).tolist() == [6, 7, 8]
