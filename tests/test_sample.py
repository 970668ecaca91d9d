"""sample.py --wav: the real streaming loop (codec encoder step, model step, codec decoder step) on a
tiny fake run; it writes a stereo reply.wav and reply.json, and refuses a bad wav by its path."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nanosdm import audio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from test_dualstream import make_tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    cfg = make_tiny_run(root)
    from nanosdm import dualstream
    dualstream.train(dict(cfg, align_max_steps=2), "align")
    shutil.copy(os.path.join(cfg["out_dir"], "align.pt"), os.path.join(cfg["out_dir"], "sft.pt"))
    preset_dir = root / "runs" / "tiny"
    shutil.copytree(cfg["out_dir"], preset_dir)
    return root


def sample(run, *args):
    cmd = [sys.executable, os.path.join(ROOT, "sample.py"), f"--out_root={run / 'runs'}", "--device=cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=run, timeout=300)


def test_wav_in_reply_out(run):
    t = np.arange(16000) / 16000
    audio.save_wav(run / "q.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr=22050)  # another rate
    out = run / "answers" / "r1.wav"
    p = sample(run, "--wav", str(run / "q.wav"), f"--out={out}", "--listen=1.0")
    assert p.returncode == 0, p.stderr
    wav = np.stack([audio.load_wav(out, channel=c).numpy() for c in (0, 1)])
    n_in = int(round(16000 * 16000 / 22050)) + 16000             # the input at 16 kHz, then 1 s of listening
    assert wav.shape[1] == -(-n_in // 1280) * 1280                # 80 ms frames, as streamed
    assert np.abs(wav[1, :10000]).max() > 0.2                     # channel 1: the user, as heard
    with open(run / "answers" / "r1.json") as f:
        reply = json.load(f)
    assert set(reply) == {"text", "words", "onset_s", "rtf"} and reply["rtf"] > 0
    assert os.path.exists(run / "answers" / "r1.png")


def test_a_bad_wav_is_named(run):
    (run / "empty.wav").write_bytes(b"")
    p = sample(run, "--wav", str(run / "empty.wav"))
    assert p.returncode != 0 and "empty.wav" in p.stderr and "empty" in p.stderr
