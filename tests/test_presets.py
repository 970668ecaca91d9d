"""
The `small` preset runs: every training stage of `--preset=small`, with its architecture as it is
(widths, layers, the 512-step contexts, the adversarial codec, the bf16 autocast flag), trains for
a step or two on a tiny corpus, so a change that breaks the larger configuration fails here and
not an hour into a GPU run.

The stages are called in one process, in train.py's order, without their evaluations: those are
the tiny preset's code at other sizes, and at small size they cost minutes of CPU (the whole
`python train.py --preset=small` with overrides like these, evaluations included, passes in about
5 CPU minutes). On a CPU without
native bf16 (AVX2 only) utils.autocast is a no-op, so the last test turns it on at tiny widths.
"""
import math
import os
import shutil
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from nanosdm import asr, codec, dpo, dualtrain, omni, textlm, tokenizer, unitstrain, utils, vocoder
from nanosdm.corpus import speech, spokenworld  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py

# data and steps only: every width, depth, context and loss switch stays the small preset's
SHRINK = [
    "--device=cpu", "--workers=1", "--seed=3",
    "--data_entities=24", "--data_text_docs=300", "--data_dialogues=4", "--data_eval_dialogues=1",
    "--text_batch_size=1", "--text_max_steps=2", "--text_warmup=1", "--text_eval_interval=1", "--text_eval_batches=1",
    "--text_ckpt_interval=1",
    "--units_batch_size=1", "--units_max_steps=1", "--units_warmup=1", "--units_kmeans_iters=3", "--units_ctc_steps=2",
    # the discriminator joins at step 1 and the codebooks are k-means-initialised at step 1
    "--codec_batch_size=1", "--codec_max_steps=2", "--codec_warmup=1", "--codec_vq_start=1", "--codec_adv_start=1",
    "--asr_batch_size=1", "--asr_max_steps=1", "--asr_warmup=1", "--asr_scrambled_turns=0",
    "--align_user_turns=24", "--align_assistant_turns=8",     # > 512 frames: one full training window
    "--align_batch_size=1", "--align_max_steps=1", "--align_warmup=1",
    "--sft_batch_size=1", "--sft_max_steps=2", "--sft_warmup=1",
    # align's one step is a speech batch; sft's first is text-only (its draw at seed 3 is 0.13), its second speech
    # (0.39: with timed text batches it would be one of them, so they are off here)
    "--align_text_frac=0", "--sft_text_frac=0.3", "--sft_timed_frac=0",
    "--dpo_batch_size=2", "--dpo_max_steps=1", "--dpo_warmup=1",
    "--vocoder_batch_size=1", "--vocoder_max_steps=1", "--vocoder_warmup=1",
    "--omni_extra_exchanges=0", "--omni_batch_size=1", "--omni_adapter_steps=1", "--omni_decoder_steps=1",
    "--omni_warmup=1",
]


def load(cfg, name):
    return utils.load_checkpoint(os.path.join(cfg["out_dir"], name))


def fake_pairs(cfg, n=2, length=96, reply_from=64):
    """Preference pairs cut from the training streams (dpo's own pairs need the sft model to
    sample and the ear to judge: evaluation code): rejected = chosen with its reply's codes moved."""
    st = speech.Streams(os.path.join(cfg["out_dir"], "speech"), "train")
    chosen = torch.stack([torch.from_numpy(st.window(i * length, length)) for i in range(n)])
    rejected = chosen.clone()
    K = cfg["codec_n_q"]
    rejected[:, reply_from:, 1:1 + K] = (rejected[:, reply_from:, 1:1 + K] + 7) % cfg["codec_codebook_size"]
    reply = torch.zeros(n, length, dtype=torch.bool)
    reply[:, reply_from:] = True
    return dict(chosen=chosen.to(torch.int16), rejected=rejected.to(torch.int16), reply=reply)


@pytest.fixture(scope="module")
def small(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("small")
    cfg = train.parse_config(["--preset=small"] + SHRINK)
    cfg.update(data_dir=str(root / "data"), out_dir=str(root / "out"))
    utils.seed_everything(cfg["seed"])
    spokenworld.build(cfg)
    tokenizer.build(cfg)
    assert textlm.train(cfg, stop_step=1) == {}      # stopped before its QA evaluation, a checkpoint at step 1
    unitstrain.train(cfg)
    codec.train(cfg)
    asr.train(cfg)
    speech.build(cfg)
    dualtrain.train(cfg, "align")
    dualtrain.train(cfg, "sft")
    dpo.train(cfg, fake_pairs(cfg))
    vocoder.train(cfg)
    omni.train(cfg)
    return cfg


def test_small_preset_differs_from_tiny():
    """Guards the premise: if the preset stopped changing these, the tests below would test tiny."""
    tiny, small = train.parse_config([]), train.parse_config(["--preset=small"])
    for key in ("text_d_model", "text_block_size", "dual_context", "codec_n_q", "codec_adv_weight", "asr_d_model",
                "units_d_model", "codec_autocast"):
        assert small[key] != tiny[key], key
    assert small["codec_adv_weight"] > 0 and small["codec_autocast"] is True


def test_text_lm_has_the_small_shape(small):
    ckpt = load(small, "text.pt")
    c = ckpt["config"]
    assert (c["n_layer"], c["n_head"], c["d_model"], c["block_size"]) == (8, 8, 512, 512)
    assert ckpt["step"] == 1 and math.isfinite(ckpt["history"]["train"][-1][1])


def test_units_cluster_the_small_encoder(small):
    ckpt = load(small, "units.pt")
    assert ckpt["finished"] and ckpt["layer"] == small["units_layer"] == 4
    assert (ckpt["config"]["n_layer"], ckpt["config"]["d_model"]) == (8, 384)
    assert tuple(ckpt["centroids"].shape) == (500, 384)


def test_codec_trains_adversarially(small):
    ckpt = load(small, "codec.pt")
    c = ckpt["config"]
    assert (c["dim"], c["n_q"], c["codebook_size"], c["latent_dim"]) == (384, 8, 1024, 128)
    assert ckpt["step"] == 2 and bool(ckpt["model"]["quantizer.initted"])
    # the discriminator took one optimizer step (step 1 of 0..1), and the codec's loss stayed finite
    assert ckpt["disc"] is not None
    assert {int(s["step"]) for s in ckpt["optimizer_d"]["state"].values()} == {1}
    assert all(math.isfinite(v) for _, v in ckpt["history"]["mel"])


def test_asr_has_the_small_shape(small):
    ckpt = load(small, "asr.pt")
    assert (ckpt["config"]["n_layer"], ckpt["config"]["d_model"]) == (8, 384)
    assert ckpt["step"] == 1 and math.isfinite(ckpt["history"]["train"][-1][1])


def test_speech_streams_have_eight_codebooks(small):
    st = speech.Streams(os.path.join(small["out_dir"], "speech"), "train")
    assert st.assistant.shape[1] == st.user.shape[1] == 8
    assert len(st) > small["dual_context"]           # a training window is a full 512-step context
    assert int(st.assistant.max()) < 1024


@pytest.mark.parametrize("name", ["align", "sft"])
def test_dual_stream_trains_on_512_step_windows(small, name):
    ckpt = load(small, f"{name}.pt")
    c = ckpt["config"]
    assert (c["context"], c["n_q"], c["d_model"], c["n_layer"], c["depth_layers"], c["depth_d_model"]) == \
        (512, 8, 512, 8, 4, 256)
    rows = ckpt["history"]["train"]
    kinds = ["text_only" if "text_only" in r else "speech" for r in rows]
    assert kinds == (["speech"] if name == "align" else ["text_only", "speech"])
    assert all("audio_7" in r for r in rows if "text_only" not in r)            # all 8 codebooks scored
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k != "step")


def test_dpo_steps_from_the_small_sft_model(small):
    ckpt = load(small, "dpo.pt")
    assert ckpt["step"] == 1 and ckpt["config"]["context"] == 512
    assert abs(ckpt["history"][0]["loss"] - math.log(2)) < 1e-3     # policy == reference at the first step


def test_vocoder_and_omni_on_the_small_units_and_codec(small):
    voc = load(small, "vocoder.pt")
    assert voc["step"] == 1 and voc["config"]["n_units"] == 500 and voc["config"]["latent_dim"] == 128
    adapter, dec = load(small, "omni_adapter.pt"), load(small, "omni.pt")
    assert adapter["finished"] and dec["finished"] and dec["step"] == 1
    assert dec["config"]["lm_config"]["d_model"] == 512 and dec["config"]["enc_dim"] == 384
    assert dec["config"]["n_units"] == 500


def test_bf16_autocast_paths_train(small, tmp_path, monkeypatch):
    """The autocast branches (codec and its discriminator, text LM, ASR, units, dual-stream) at tiny
    widths with bf16 forced on, as on a GPU or a CPU with native bf16: losses finite, weights fp32."""
    monkeypatch.setattr(utils, "fast_bf16", lambda device: True)
    entered = []                      # the dtypes of the autocast regions entered (not those that turn it off)
    real = torch.autocast

    def spy(*args, **kw):
        if kw.get("enabled", True):
            entered.append(kw.get("dtype"))
        return real(*args, **kw)
    monkeypatch.setattr(torch, "autocast", spy)
    cfg = train.parse_config([
        "--device=cpu", "--seed=3", "--codec_autocast=True", "--codec_adv_weight=1.0", "--codec_adv_start=1",
        "--codec_vq_start=1", "--codec_max_steps=2", "--codec_batch_size=1", "--codec_segment_frames=8",
        "--codec_dim=32", "--codec_sub_dim=16", "--codec_enc_layers=1", "--codec_dec_layers=1", "--codec_sub_layers=1",
        "--codec_latent_dim=8", "--codec_n_q=4", "--codec_codebook_size=16", "--codec_init_batches=1",
        "--codec_distill_weight=0", "--codec_adv_frames=4",
        "--text_n_layer=1", "--text_n_head=2", "--text_d_model=32", "--text_block_size=64", "--text_batch_size=1",
        "--text_max_steps=2", "--text_eval_interval=1", "--text_eval_batches=1", "--text_ckpt_interval=1",
        "--asr_n_layer=1", "--asr_n_head=2", "--asr_d_model=32", "--asr_batch_size=1", "--asr_max_steps=1",
        "--asr_scrambled_turns=0",
        "--units_targets=mfcc", "--units_n_layer=2", "--units_n_head=2", "--units_d_model=32", "--units_layer=1",
        "--units_proj_dim=16", "--units_k=8", "--units_k_targets=8", "--units_batch_size=1", "--units_max_steps=1",
        "--units_kmeans_iters=2", "--units_crop_seconds=1.0",
        "--dual_context=32", "--dual_depth_layers=1", "--dual_depth_heads=2", "--dual_depth_d_model=16",
        "--speech_extra_dialogues=0", "--align_batch_size=1", "--align_max_steps=1", "--align_user_turns=8",
        "--align_assistant_turns=4", "--align_text_frac=0",
    ])
    cfg.update(data_dir=small["data_dir"], out_dir=str(tmp_path))
    shutil.copy(os.path.join(small["out_dir"], "tokenizer.model"), tmp_path / "tokenizer.model")
    for name, fn in (("text", lambda: textlm.train(cfg, stop_step=1)), ("codec", lambda: codec.train(cfg)),
                     ("asr", lambda: asr.train(cfg)), ("units", lambda: unitstrain.train(cfg)),
                     ("speech", lambda: speech.build(cfg)), ("align", lambda: dualtrain.train(cfg, "align"))):
        entered.clear()
        fn()
        assert set(entered) == ({torch.bfloat16} if name != "speech" else set()), (name, entered)
    for name, losses in (("text.pt", lambda c: [v for _, v in c["history"]["train"]]),
                         ("codec.pt", lambda c: [v for _, v in c["history"]["mel"]]),
                         ("asr.pt", lambda c: [v for _, v in c["history"]["train"]]),
                         ("align.pt", lambda c: [v for r in c["history"]["train"] for k, v in r.items() if k != "step"])):
        ckpt = load(cfg, name)
        assert losses(ckpt) and all(math.isfinite(v) for v in losses(ckpt)), name
        assert all(t.dtype != torch.bfloat16 for t in ckpt["model"].values()), name
    assert "audio" in load(cfg, "align.pt")["history"]["train"][-1]       # a speech batch went through the depth model
    assert np.isfinite(load(cfg, "units.pt")["centroids"].numpy()).all()
