"""LLaMA-Omni's way: the adapter's lengths, the speech embeddings' places, the lambda check, streaming
generation, prompts trimmed to the block."""
import pytest
import torch

from nanosdm import omni, omni_data
from nanosdm.codec import Codec
from nanosdm.tokenizer import ASSISTANT, BOS, EOS, USER
from nanosdm.vocoder import Vocoder

LM = dict(vocab_size=40, n_layer=1, n_head=2, d_model=16, block_size=96, dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return omni.Omni(LM, enc_dim=6, k=3, adapter_hidden=32, n_units=10, lam=4, dec_layers=1, dec_heads=2,
                     dec_d_model=16).eval()


def test_adapter_downsampled_lengths():
    adapter = omni.SpeechAdapter(6, 16, k=3, hidden=32)
    out, lengths = adapter(torch.randn(2, 10, 6), torch.tensor([10, 7]))
    assert out.shape == (2, 4, 16) and lengths.tolist() == [4, 3]
    assert [omni_data.downsampled_length(n, 3) for n in (1, 3, 4, 9, 10)] == [1, 1, 2, 3, 4]
    # frames 0..2 make position 0: a change in frame 3 leaves it alone
    x = torch.randn(1, 10, 6)
    y = x.clone()
    y[0, 3] += 1
    assert torch.equal(adapter(x, torch.tensor([10]))[0][0, 0], adapter(y, torch.tensor([10]))[0][0, 0])


def test_speech_embeddings_land_on_their_positions(model):
    a, b = torch.randn(4, 6), torch.randn(7, 6)
    ex = omni_data.build_example([("speech", a), ("speech", b)], 3, [20])
    batch = omni_data.collate([ex, omni_data.build_example([("speech", b)], 3)], "cpu")
    x = model.embed(batch["ids"], batch["is_speech"], batch["segments"])
    adapted_b = model.adapter(b[None], torch.tensor([7]))[0][0]
    where = batch["is_speech"][0].nonzero()[:, 0]
    assert torch.allclose(x[0, where[2:]], adapted_b, atol=1e-6)
    assert torch.allclose(x[1, batch["is_speech"][1]], adapted_b, atol=1e-6)
    assert torch.equal(x[0, 0], model.lm.embed.weight[BOS])


def test_the_lambda_check():
    assert omni.check_lambda(4, [3, 5], [12, 10]) == 4.0
    with pytest.raises(ValueError, match="--omni_lambda=5"):
        omni.check_lambda(4, [3, 5], [13, 10])


def test_respond_streams_text_units_and_audio(model):
    torch.manual_seed(0)
    codec = Codec(dim=32, sub_dim=16, enc_layers=1, dec_layers=1, sub_layers=1, kernel=3, latent_dim=8, n_q=2,
                  codebook_size=16).eval()
    voc = Vocoder(n_units=10, latent_dim=8, dim=16, kernel=3, dur_layers=1, frame_layers=1, latent_layers=1).eval()
    torch.nn.init.normal_(model.decoder.head.weight, std=2.0)   # a busy random decoder
    ex = omni_data.build_example([("speech", torch.randn(9, 6))], 3)
    out = omni.respond(model, ex, voc, codec, omega=3, max_tokens=6)
    assert 1 <= len(out["tokens"]) <= 6 and EOS not in out["tokens"]
    assert out["units_at"] == sorted(out["units_at"]) and out["units_at"][-1] == len(out["units"])
    # the streamed units are the offline units of the same answer, teacher-forced
    full = omni_data.build_example([("speech", ex["segments"][0])], 3, out["tokens"])
    states = omni.answer_states(model, [full])[0]
    assert out["units"] == model.decoder.units(states[None])[0]
    assert len(out["wav"]) % 1280 == 0 and (out["first_audio_s"] is not None) == (len(out["wav"]) > 0)


def test_a_prompt_longer_than_the_block_is_trimmed_to_fit_or_refused_by_name(model):
    block = LM["block_size"]                          # 96 positions
    # 60 frames of context speech (22 positions), an assistant turn (22), a 150-frame question (52):
    # 98 positions with no room for a reply: the oldest turn goes, the question and a reply fit
    item = dict(parts=[("speech", torch.randn(60, 6)), ("assistant", [11] * 20)], question=torch.randn(150, 6), answer=[20, 21])
    ex = omni_data.make_example(item, 3, block, with_answer=False)
    assert len(ex["ids"]) < block and ex["ids"].count(USER) == 1 and ex["ids"].count(ASSISTANT) == 2
    assert len(omni.respond(model, ex, max_tokens=6)["tokens"]) >= 1          # was: "KV cache full: 0 + 98 > 96"
    assert len(omni_data.make_example(item, 3, block)["ids"]) <= block           # the same with the answer (training)
    short = dict(item, question=torch.randn(30, 6))   # a short question keeps both turns
    assert omni_data.make_example(short, 3, block, with_answer=False)["ids"].count(USER) == 2
    # a question that alone outgrows the block: the setting to change is named
    with pytest.raises(ValueError, match=r"300 encoder frames \(9.0 s\).*--text_block_size"):
        omni_data.make_example(dict(item, question=torch.randn(300, 6)), 3, block, with_answer=False)


def test_sample_omni_wav_in_reply_out(tmp_path):
    """sample.py --model=omni on a tiny fake run: the question in, reply.wav (stereo) and reply.json out."""
    import json
    import os
    import subprocess
    import sys
    import numpy as np
    from test_dualtrain import make_tiny_run
    from nanosdm import utils
    from nanosdm.corpus import audio
    from nanosdm.asr import ASR
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = make_tiny_run(tmp_path)
    out_dir = cfg["out_dir"]
    torch.manual_seed(0)
    asr = ASR(n_layer=1, n_head=2, d_model=16)
    utils.save_checkpoint(os.path.join(out_dir, "asr.pt"), dict(model=asr.state_dict(), config=asr.config))
    lm = utils.load_checkpoint(os.path.join(out_dir, "text.pt"))
    model = omni.Omni(lm["config"], 16, 3, 32, 10, 4, 1, 2, 16)
    model.lm.load_state_dict(lm["model"])
    utils.save_checkpoint(os.path.join(out_dir, "omni.pt"), dict(model=model.state_dict(), config=model.config))
    voc = Vocoder(n_units=10, latent_dim=8, dim=16, kernel=3, dur_layers=1, frame_layers=1, latent_layers=1)
    utils.save_checkpoint(os.path.join(out_dir, "vocoder.pt"), dict(model=voc.state_dict(), config=voc.config))
    os.makedirs(tmp_path / "runs", exist_ok=True)
    os.symlink(out_dir, tmp_path / "runs" / "tiny")
    t = np.arange(16000) / 16000
    audio.save_wav(tmp_path / "q.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    out = tmp_path / "r.wav"
    p = subprocess.run([sys.executable, os.path.join(root, "sample.py"), f"--out_root={tmp_path / 'runs'}", "--device=cpu",
                        "--model=omni", "--wav", str(tmp_path / "q.wav"), f"--out={out}", "--max_new_tokens=6"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    wav = np.stack([audio.load_wav(out, channel=c).numpy() for c in (0, 1)])
    assert wav.shape[1] >= 16000 and np.abs(wav[1, :10000]).max() > 0.2     # channel 1: the question
    with open(tmp_path / "r.json") as f:
        reply = json.load(f)
    assert {"text", "words", "onset_s", "rtf"} <= set(reply)
    assert os.path.exists(tmp_path / "r.png")
