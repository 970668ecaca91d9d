"""The streaming codec: shapes and bitrate, streaming = batch, causality, RVQ invariants, training."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from nanosdm import codec, codec_losses
from nanosdm.corpus import espeak
from nanosdm.eval import metrics  # noqa: E402
from nanosdm.codec import FRAME, Codec  # noqa: E402

TINY = dict(dim=32, sub_dim=16, enc_layers=1, dec_layers=1, sub_layers=1, kernel=3, latent_dim=8,
            n_q=3, codebook_size=16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors this small gain nothing from threads, and on a busy machine OpenMP's spinning
    threads make them many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SENTENCES = (("the green cat lives in paris.", "en-us"), ("how many legs does the bird have?", "en-us+f3"))


@pytest.fixture(scope="module")
def spoken():
    return [espeak.synthesize(text, voice=v) for text, v in SENTENCES]   # (wav, words, phones)


@pytest.fixture(scope="module")
def speech(spoken):
    """The two eSpeak sentences as a batch, 16 kHz, cut to whole frames."""
    n = min(len(w) for w, _, _ in spoken) // FRAME * FRAME
    return torch.tensor(np.stack([w[:n] for w, _, _ in spoken]))


def test_shapes_and_exact_bitrate():
    torch.manual_seed(0)
    model = Codec(**TINY).eval()
    wav = torch.randn(2, 3 * FRAME - 500) * 0.1
    codes = model.encode(wav)
    assert codes.shape == (2, 3, 3) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 16
    assert model.decode(codes).shape == (2, 3 * FRAME)
    assert model.decode(codes[:, :1]).shape == (2, 3 * FRAME)        # fewer codebooks decode too
    assert model.bitrate == 12.5 * 3 * 4 == 150.0
    assert Codec(n_q=8, codebook_size=1024).bitrate == 1000.0        # Moshi-like: 8 x 10 bit at 12.5 Hz
    assert Codec(n_q=4, codebook_size=256).bitrate == 400.0


def test_a_big_batch_decodes_a_few_rows_at_a_time_to_the_same_audio():
    torch.manual_seed(0)
    model = Codec(**TINY).eval()
    codes = torch.randint(16, (7, 3, 4))
    whole = model.decode(codes, batch_size=7)
    assert whole.shape == (7, 4 * FRAME) and whole.abs().max() > 1e-4
    assert torch.equal(model.decode(codes, batch_size=3), whole)     # 3 + 3 + 1 rows
    assert torch.equal(model.decode(codes[5:6], batch_size=3), whole[5:6])
    assert model.decode(codes[:0]).shape == (0, 4 * FRAME)                 # an empty batch, not None


def test_streaming_equals_batch():
    torch.manual_seed(1)
    model = Codec(**TINY).eval()
    wav = torch.randn(2, 6 * FRAME) * 0.1
    codes, out = model.encode(wav), model.decode(model.encode(wav))
    enc, dec = model.encoder_state(2), model.decoder_state(2)
    stream_codes, stream_out = [], []
    for t in range(6):
        c, enc = model.encode_step(wav[:, t * FRAME:(t + 1) * FRAME], enc)
        o, dec = model.decode_step(c, dec)
        stream_codes.append(c)
        stream_out.append(o)
    assert torch.equal(torch.cat(stream_codes, 2), codes)
    torch.testing.assert_close(torch.cat(stream_out, 1), out, atol=1e-5, rtol=1e-4)
    assert out.abs().max() > 1e-4                                     # not trivially zero


def test_causal_future_audio_never_changes_the_past():
    torch.manual_seed(2)
    model = Codec(**TINY).eval()
    wav = torch.randn(1, 5 * FRAME) * 0.1
    other = wav.clone()
    other[:, 3 * FRAME:] = torch.randn(1, 2 * FRAME)                  # a different future
    a, b = model.encode(wav), model.encode(other)
    assert torch.equal(a[..., :3], b[..., :3]) and not torch.equal(a, b)
    # the decoder too: codes of frame 3 on change nothing in the first 3 frames of audio
    b_codes = a.clone()
    b_codes[..., 3:] = (a[..., 3:] + 1) % 16
    torch.testing.assert_close(model.decode(a)[:, :3 * FRAME], model.decode(b_codes)[:, :3 * FRAME])


def test_rvq_residual_shrinks_with_each_codebook():
    torch.manual_seed(3)
    vq = codec.ResidualVQ(n_q=4, size=16, dim=8)
    z = torch.randn(2000, 8) * torch.linspace(0.2, 3, 8)
    vq.init_kmeans(z, batch_vectors=500)
    assert bool(vq.initted)
    residual, norms = z, [z.norm(dim=1).mean().item()]
    codes = vq.encode(z[None])[0]                                     # [4, N]
    assert torch.equal(codes[0], torch.cdist(z, vq.embed[0]).argmin(1))  # the nearest code, by brute force
    for level in range(4):
        residual = residual - vq.embed[level][codes[level]]
        norms.append(residual.norm(dim=1).mean().item())
    assert all(b < a for a, b in zip(norms, norms[1:])), norms
    torch.testing.assert_close(vq.decode(codes[None])[0], z - residual)  # decode = sum of the codes


def test_dead_code_is_replaced_and_ema_moves_codes():
    torch.manual_seed(4)
    vq = codec.ResidualVQ(n_q=1, size=8, dim=4, decay=0.8, dead_frac=0.1).train()
    z = torch.randn(1, 256, 4)
    vq.init_kmeans(z[0], batch_vectors=256)
    vq.embed[0, 5] = 100.0                                            # far from every vector: never chosen
    vq.cluster_size[0, 5] = 1e-3
    before = vq.embed[0].clone()
    vq(z)
    assert vq.replaced[0].item() >= 1
    assert vq.embed[0, 5].abs().max() < 10                           # now sits on a real vector
    assert not torch.equal(vq.embed[0], before)                      # and EMA moved the others


def test_gradients_reach_the_encoder_through_the_quantizer(speech):
    torch.manual_seed(5)
    model = Codec(**TINY).train()
    model.quantizer.init_kmeans(model.encode_latent(speech, model.encoder_state(2))[0].detach().reshape(-1, 8),
                                batch_vectors=16)
    out, commit, first = model(speech, n_q=3)
    codec_losses.mel_loss(out[:, codec.DELAY:], speech[:, :-codec.DELAY]).backward()
    g = model.enc_in.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert commit.item() > 0


def test_short_training_lowers_the_mel_loss(speech):
    torch.manual_seed(6)
    model = Codec(**TINY).train()
    fake_teacher = lambda w: torch.randn(1, 1, 12).expand(w.shape[0], w.shape[1] // 320, 12) * \
        w.unfold(1, 320, 320).std(-1, keepdim=True)                   # 50 Hz "features": loudness
    model.distill = torch.nn.Linear(8, 12)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, x = [], speech[:, :16 * FRAME]
    for step in range(40):
        if step == 10:
            model.quantizer.init_kmeans(model.encode_latent(x, model.encoder_state(2))[0].detach().reshape(-1, 8),
                                        batch_vectors=32)
        out, commit, first = model(x, n_q=3 if step >= 10 else 0)
        mel = codec_losses.mel_loss(out[:, codec.DELAY:], x[:, :-codec.DELAY])
        loss = mel + commit
        if step >= 10:
            loss = loss + codec.distill_loss(model, first, x, fake_teacher)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(mel.item())
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3]), losses


def fake_split(data_dir, name, spoken):
    """A SpeechSplit on disk: each utterance once as a user turn (channel 1), 0.25 s of silence around."""
    offset, pcm, lines = 0, [], []
    for i, (w, words, phones) in enumerate(spoken):
        stereo = np.zeros((len(w) + 8000, 2), dtype=np.int16)
        stereo[4000:4000 + len(w), 1] = (w * 32767).astype(np.int16)
        shift = lambda items: [[label, s + 0.25, e + 0.25] for label, s, e in items]
        turn = dict(speaker="user", kind="question", text="x", start=0.25, end=0.25 + len(w) / 16000,
                    words=shift(words), phones=shift(phones))
        lines.append(json.dumps(dict(id=f"{name}-{i}", offset=offset, length=len(stereo), turns=[turn])))
        pcm.append(stereo)
        offset += len(stereo)
    np.concatenate(pcm).tofile(os.path.join(data_dir, f"speech_{name}.bin"))
    with open(os.path.join(data_dir, f"speech_{name}.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")


def test_stage_trains_resumes_and_reports(tmp_path, spoken, speech, capsys):
    for name in ("train", "unseen_voice"):
        fake_split(str(tmp_path), name, spoken)
    cfg = train.parse_config(["--codec_dim=32", "--codec_sub_dim=16", "--codec_enc_layers=1", "--codec_dec_layers=1",
                              "--codec_sub_layers=1", "--codec_latent_dim=8", "--codec_n_q=2",
                              "--codec_codebook_size=16", "--codec_batch_size=2", "--codec_segment_frames=4",
                              "--codec_max_steps=8", "--codec_vq_start=2", "--codec_init_batches=2",
                              "--codec_eval_clips=2", "--codec_ckpt_interval=3"])
    cfg.update(device="cpu", data_dir=str(tmp_path), out_dir=str(tmp_path / "out"))
    assert codec.train(cfg, stop_step=5) == {}                       # "killed" at step 5
    assert torch.load(tmp_path / "out" / "codec.pt", weights_only=True)["step"] == 5
    figures = codec.train(cfg)
    figures.update(metrics.evaluate_codec_checkpoint(cfg))  # what the stage runner does next
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "training without semantic distillation" in printed
    assert figures["codec_bitrate_bps"] == 12.5 * 2 * 4
    model = Codec.load(str(tmp_path / "out" / "codec.pt"))
    # the figures are those of the saved codec on the unseen-voice clips, recomputed here
    from nanosdm.corpus.spokenworld import SpeechSplit
    clips = [w for w, _ in SpeechSplit(str(tmp_path), "unseen_voice").utterances(speaker="user") if len(w) >= 8000][:2]
    codes = [model.encode(w[None]) for w in clips]
    decoded = [model.decode(c)[0] for c in codes]
    delay = metrics.best_delay(clips, decoded)
    mel = np.mean([metrics.mel_distance_db(w, metrics.align(o, delay, len(w))) for w, o in zip(clips, decoded)])
    assert figures["codec_mel_db"] == pytest.approx(mel, abs=1e-3)
    usage, _ = metrics.codebook_usage(torch.cat([c[0].T for c in codes]), 16)
    assert figures["codec_usage_min"] == pytest.approx(min(usage), abs=1e-4) and 1 / 16 <= min(usage) <= 1
    assert figures["codec_stream_rtf_x"] > 1                     # streams faster than real time
    assert model.encode(speech[:1]).shape == (1, 2, speech.shape[1] // FRAME)
    assert (tmp_path / "out" / "plots" / "codec_spectrograms.png").exists()
    assert (tmp_path / "out" / "plots" / "codec_usage.png").exists()
