"""Stages `align` and `sft` (nanosdm/dualtrain.py): the training loop, its batches, resuming."""
import numpy as np
import pytest
import torch

from nanosdm.dualstream import ZERO
from test_dualstream import K, VOCAB, tiny


def make_tiny_run(root):
    """A tiny out/ directory with everything stage `align` reads: tokenizer, text LM, codec and
    speech streams (random codes, a real text stream). Returns the config."""
    import os
    import sys
    import numpy as np
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import train
    from nanosdm import textlm, tokenizer, utils
    from nanosdm.corpus import speech, spokenworld
    from nanosdm.codec import Codec
    from test_textlm import write_world
    cfg = train.parse_config([
        "--text_n_layer=2", "--text_n_head=2", "--text_d_model=32", "--text_block_size=64", "--text_batch_size=4",
        "--text_max_steps=4", "--text_eval_interval=4", "--text_eval_batches=1", "--tokenizer_vocab_size=100",
        "--dual_context=32", "--dual_depth_layers=1", "--dual_depth_heads=2", "--dual_depth_d_model=16",
        "--align_batch_size=2", "--align_max_steps=6", "--align_ckpt_interval=2", "--align_warmup=2",
        "--align_text_frac=0.3", "--dual_ear=codec"])   # random codec codes in both channels: no units to hear through
    cfg.update(device="cpu", data_dir=str(root / "data"), out_dir=str(root / "out"))
    write_world(cfg["data_dir"], n_docs=60)
    from test_textlm import NAMES
    spokenworld.write_jsonl(os.path.join(cfg["data_dir"], "world.jsonl"), [dict(name=n, text_only=i < 2) for i, n in enumerate(NAMES)])
    utils.seed_everything(0)
    tokenizer.build(cfg)
    textlm.train(cfg)
    torch.manual_seed(0)
    codec = Codec(dim=32, sub_dim=16, enc_layers=1, dec_layers=1, sub_layers=1, latent_dim=8, n_q=2, codebook_size=16)
    utils.save_checkpoint(os.path.join(cfg["out_dir"], "codec.pt"), dict(model=codec.state_dict(), config=codec.config))
    tok = tokenizer.Tokenizer.load(os.path.join(cfg["out_dir"], "tokenizer.model"))
    rng = np.random.default_rng(0)
    for split in ("align", "train"):
        w = speech.StreamWriter(os.path.join(cfg["out_dir"], "speech"), split)
        for i in range(3):
            turns = [dict(speaker="user", text="what colour is the kotan?", start=0.2, end=1.3, kind="question", answer="red", words=[["what", 0.2, 0.4], ["colour", 0.4, 0.7],
                          ["is", 0.7, 0.8], ["the", 0.8, 0.9], ["kotan", 0.9, 1.3]]),
                     dict(speaker="assistant", text="the kotan is red.", start=1.8, end=2.7, kind="answer", words=[["the", 1.8, 1.9], ["kotan", 1.9, 2.3],
                          ["is", 2.3, 2.4], ["red", 2.4, 2.7]])]
            if split == "align" and i == 2:   # align's dialogues: some with the user alone (windows.Listening)
                turns = turns[:1]
            text = speech.text_stream(turns, 50, tok)
            w.add(dict(id=f"{split}-{i}", turns=turns), text, rng.integers(0, 16, (2, 50, 2)).astype(np.uint16))
        w.close()
    # the dialogues' two channels as the data stage writes them (quiet noise), for what plays them live
    n = 50 * 1280
    pcm = (rng.standard_normal((3 * n, 2)) * 300).astype(np.int16)
    pcm.tofile(os.path.join(cfg["data_dir"], "speech_unseen_voice.bin"))
    spokenworld.write_jsonl(os.path.join(cfg["data_dir"], "speech_unseen_voice.jsonl"),
                            [dict(id=f"unseen_voice-{i}", offset=i * n, length=n, turns=turns) for i in range(3)])
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("run"))


def test_align_stops_and_resumes_where_it_stopped(tiny_run, tmp_path):
    import os
    import shutil
    from nanosdm import dualtrain, utils
    cfg = dict(tiny_run, out_dir=str(tmp_path / "killed"))
    straight = dict(tiny_run, out_dir=str(tmp_path / "straight"))
    for d in (cfg, straight):
        shutil.copytree(tiny_run["out_dir"], d["out_dir"])
    metrics = dualtrain.train(straight, "align")
    hist = utils.load_checkpoint(os.path.join(straight["out_dir"], "align.pt"))["history"]["train"]
    audio_rows = [r for r in hist if "audio" in r][-50:]      # the figures are the last 50 steps' means
    assert metrics["align_audio_loss"] == pytest.approx(np.mean([r["audio"] for r in audio_rows]), abs=1e-4)
    assert metrics["align_semantic_loss"] == pytest.approx(np.mean([r["audio_0"] for r in audio_rows]), abs=1e-4)
    assert metrics["align_text_loss"] == pytest.approx(np.mean([r["text"] for r in hist if "text" in r][-50:]), abs=1e-4)
    assert os.path.exists(os.path.join(straight["out_dir"], "plots", "align_loss.png"))
    assert dualtrain.train(cfg, "align", stop_step=3) == {}     # killed after step 3: last checkpoint at 2
    path = os.path.join(cfg["out_dir"], "align.pt")
    assert utils.load_checkpoint(path)["step"] == 2
    torch.manual_seed(99)                                        # resuming must not depend on the global RNG
    dualtrain.train(cfg, "align")
    a, b = utils.load_checkpoint(path), utils.load_checkpoint(os.path.join(straight["out_dir"], "align.pt"))
    assert a["step"] == b["step"] == 6
    for k in b["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    # started from the text LM: its blocks and head, moved a little by 6 steps (a fresh init: cosine ~0)
    lm = utils.load_checkpoint(os.path.join(cfg["out_dir"], "text.pt"))["model"]
    for ours, theirs in (("transformer.blocks.0.attn.qkv.weight", None), ("text_head.weight", "head.weight")):
        cos = torch.nn.functional.cosine_similarity(b["model"][ours].flatten(), lm[theirs or ours].flatten(), 0)
        assert cos > 0.8, (ours, cos)


def test_timed_text_batches_train_the_text_stream_alone(tiny_run, tmp_path):
    import os
    import shutil
    from nanosdm import dualtrain, utils
    from nanosdm.dualtrain import timed_batch
    stream = np.arange(VOCAB - 5, dtype=np.uint16)
    m = tiny()
    g = lambda: torch.Generator().manual_seed(0)
    inputs, targets = timed_batch(m, (stream, stream < 0), 3, 10, g(), "cpu")
    assert inputs.shape == targets.shape == (3, 10, 1 + 2 * K) and (targets[..., 1:] == ZERO).all()
    assert (targets[:, 1:, 0] - targets[:, :-1, 0] == 1).all()          # a contiguous window of the stream
    assert torch.equal(inputs[:, 1:, 0], targets[:, :-1, 0])             # read one step later
    losses = m(inputs, targets)[2]
    assert "audio" not in losses and losses["text"] > 0      # no audio loss: the audio streams hold nothing
    # where the user speaks the words are input, never a target: heard everywhere, no loss at all
    inputs_h, targets_h = timed_batch(m, (stream, stream % 2 == 0), 3, 10, g(), "cpu")
    assert torch.equal(inputs_h, inputs) and (targets_h[..., 0] >= VOCAB).sum() == (targets[..., 0] % 2 == 0).sum()
    assert m(inputs, timed_batch(m, (stream, stream >= 0), 3, 10, g(), "cpu")[1])[2]["text"] == 0
    cfg = dict(tiny_run, out_dir=str(tmp_path / "timed"), align_text_frac=0.0, align_timed_frac=0.5)
    shutil.copytree(tiny_run["out_dir"], cfg["out_dir"])
    dualtrain.train(cfg, "align")
    hist = utils.load_checkpoint(os.path.join(cfg["out_dir"], "align.pt"))["history"]["train"]
    timed = [r for r in hist if "timed" in r]
    assert 0 < len(timed) < len(hist) and all("audio" not in r and "text" not in r for r in timed)


def test_align_trains_the_ears_convolution(tiny_run, tmp_path):
    import os
    import shutil
    from nanosdm import dualstream, dualtrain
    cfg = dict(tiny_run, out_dir=str(tmp_path / "conv"), dual_ear_conv=8)
    shutil.copytree(tiny_run["out_dir"], cfg["out_dir"])
    dualtrain.train(cfg, "align")
    m = dualstream.load_model(os.path.join(cfg["out_dir"], "align.pt"))
    assert m.config["ear_conv"] == 8 and m.ear_conv.emb.weight.shape[1] == 8   # rebuilt from the checkpoint
    assert m.ear_conv.out.weight.abs().max() > 0               # its zero output layer has learnt something


def test_some_windows_open_at_a_dialogue_start():
    import numpy as np
    from nanosdm.dualtrain import get_batch

    class FakeStreams:        # 10 dialogues of 100 frames; a frame's token is its index
        dialogues = [dict(offset=100 * i, frames=100) for i in range(10)]

        def __len__(self):
            return 1000

        def window(self, start, length):
            return np.arange(start, start + length)[:, None].repeat(3, 1)

    g = torch.Generator().manual_seed(0)
    firsts = get_batch(FakeStreams(), 400, 20, g, "cpu", start_frac=0.5)[0][:, 0, 0]
    share = (firsts % 100 == 0).float().mean().item()
    assert 0.4 < share < 0.6                          # half at a start (plus 1% by chance)
    g = torch.Generator().manual_seed(0)
    assert ((get_batch(FakeStreams(), 400, 20, g, "cpu")[0][:, 0, 0] % 100) == 0).float().mean() < 0.05


def test_ear_noise_replaces_a_share_of_the_users_ids_only():
    from nanosdm.dualtrain import ear_noise
    g = lambda: torch.Generator().manual_seed(0)
    x = torch.randint(0, 1000, (4, 50, 1 + 2 * K), generator=g())    # ids all but unique: a replaced one shows
    assert torch.equal(ear_noise(x, 0.0, K, g()), x)
    y = ear_noise(x, 0.3, K, g())
    assert torch.equal(y[..., :1 + K], x[..., :1 + K])                 # text and the model's own voice untouched
    changed = (y[..., 1 + K:] != x[..., 1 + K:]).float().mean().item()
    assert 0.25 < changed < 0.35
    assert set(y[..., 1 + K:].flatten().tolist()) <= set(x[..., 1 + K:].flatten().tolist())   # ids the user stream holds
