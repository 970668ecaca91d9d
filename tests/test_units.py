import numpy as np
import pytest
import torch

from nanosdm import units
from nanosdm.eval import metrics


def test_span_mask_covers_the_intended_fraction():
    prob, span = 0.08, 10
    mask = units.span_mask(64, 2000, prob, span, torch.Generator().manual_seed(0))
    expected = 1 - (1 - prob) ** span          # independent span starts, overlaps allowed: 0.566
    assert abs(mask.float().mean().item() - expected) < 0.02
    # every masked run is at least one whole span long
    for row in mask[:8].tolist():
        runs, n = [], 0
        for m in row + [False]:
            if m:
                n += 1
            elif n:
                runs.append(n)
                n = 0
        assert min(runs) >= span
    # a row with no random start still gets one span
    assert units.span_mask(4, 50, 0.0, span).sum(1).tolist() == [span] * 4


def test_loss_counts_masked_frames_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 30, 7, generator=g, requires_grad=True)
    targets = torch.randint(7, (2, 30), generator=g)
    mask = units.span_mask(2, 30, 0.1, 5, g)
    loss = units.masked_loss(logits, targets, mask)
    expected = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    assert torch.allclose(loss, expected)
    other = torch.where(mask, targets, (targets + 1) % 7)      # change only the visible frames' targets
    assert torch.allclose(units.masked_loss(logits, other, mask), loss)
    changed = torch.where(mask, (targets + 1) % 7, targets)    # change the masked frames' targets
    assert not torch.allclose(units.masked_loss(logits, changed, mask), loss)
    loss.backward()
    assert logits.grad[~mask].abs().max() == 0 and logits.grad[mask].abs().max() > 0


def test_dtw_recovers_a_known_time_warp():
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(30, 6, generator=gen) * 3                    # 30 distinct "canonical" frames
    # the same sequence spoken at a varying pace: frames held 1-3 times, some skipped
    warp = [0, 0, 1, 2, 2, 2, 3, 5, 6, 6, 7, 8, 9, 9, 9, 10, 11, 13, 14, 15, 15, 16, 17, 18, 19, 19,
            20, 21, 22, 22, 23, 24, 26, 27, 28, 29, 29]
    a = b[warp] + 0.1 * torch.randn(len(warp), 6, generator=gen)
    match = units.dtw_match(torch.cdist(a, b).numpy())
    assert match.tolist() == warp
    assert (np.diff(match) >= 0).all() and match[0] == 0 and match[-1] == 29


def test_dedup_collapses_runs_with_durations():
    values, durations = units.dedup(torch.tensor([5, 5, 5, 9, 9, 5, 1]))
    assert values.tolist() == [5, 9, 5, 1] and durations.tolist() == [3, 2, 1, 1]


def test_encode_gives_one_unit_per_frame_at_50_hz(tmp_path):
    from nanosdm import utils
    from nanosdm.corpus import espeak
    wav, _, _ = espeak.synthesize("the cat sat on the mat", "en-us+m3")
    encoder = units.HubertEncoder(n_targets=10, n_layer=3, n_head=2, d_model=32, proj_dim=8)
    centroids = torch.randn(12, 32)
    path = str(tmp_path / "units.pt")
    utils.save_checkpoint(path, dict(config=encoder.config, model=encoder.state_dict(), layer=2,
                                     centroids=centroids, finished=True))
    u = units.Units.load(path)
    assert u.frame_rate == 50 and u.k == 12 and len(u.encoder.transformer.blocks) == 2
    wav = torch.as_tensor(wav)[:16000 + 100]                    # 1 s and a bit
    ids = u.encode(wav)
    assert ids.shape == (50,) and ids.dtype == torch.long and ids.max() < 12
    batch = torch.stack([wav, 0.5 * wav])
    assert u.encode(batch).shape == (2, 50) and u.features(batch).shape == (2, 50, 32)
    # the same clustered layer as the full encoder's
    with torch.no_grad():
        full = encoder.eval()(units.wav_to_mel(batch), layer=2)
    assert torch.allclose(u.features(batch), full, atol=1e-5)


def causal_units(tmp_path, window=6, layers=2):
    """A causal, windowed encoder (random weights: the properties below hold for any) as Units."""
    from nanosdm import utils
    torch.manual_seed(0)
    encoder = units.HubertEncoder(n_targets=10, n_layer=3, n_head=2, d_model=32, proj_dim=8, causal=True, window=window)
    encoder.mel_mean.copy_(torch.linspace(-60, -30, units.N_MELS))
    path = str(tmp_path / "units.pt")
    utils.save_checkpoint(path, dict(config=encoder.config, model=encoder.state_dict(), layer=layers,
                                     centroids=torch.randn(12, 32), finished=True))
    return units.Units.load(path)


def test_causal_units_never_hear_the_future(tmp_path):
    u = causal_units(tmp_path)
    torch.manual_seed(1)
    wav = 0.1 * torch.randn(40 * units.HOP)
    full = u.features(wav)
    assert full.shape == (40, 32)
    changed = wav.clone()
    changed[25 * units.HOP:] += 0.3 * torch.randn(15 * units.HOP)      # frames 25.. change
    assert torch.allclose(u.features(changed)[:25], full[:25], atol=1e-5)     # frames before them do not
    assert not torch.allclose(u.features(changed)[25], full[25])
    assert torch.allclose(u.features(wav[:17 * units.HOP]), full[:17], atol=1e-5)   # a prefix is the prefix
    # read in pieces (as long recordings are), the same features as one pass
    assert torch.allclose(u.features(wav[None], piece_frames=7)[0], full, atol=1e-5)
    # the fixed normalisation: no per-clip mean (a stream has no whole clip), so a 20 dB quieter
    # voice is the same input shifted by 20 dB / 20
    assert torch.allclose(u.encoder.mel(0.1 * wav[None]), u.encoder.mel(wav[None]) - 1.0, atol=1e-3)


def test_a_stream_80_ms_at_a_time_gives_the_units_of_the_whole(tmp_path):
    u = causal_units(tmp_path)
    stream = units.UnitStream(u)
    torch.manual_seed(2)
    wav = 0.1 * torch.randn(60 * units.HOP)      # 1.2 s, 15 steps of 4 frames; the context is 2 * 5 + 4 = 14
    steps = torch.cat([stream.step(wav[i:i + 4 * units.HOP]) for i in range(0, len(wav), 4 * units.HOP)])
    assert torch.equal(steps, u.encode(wav))
    assert len(stream.buf) == (u.context + 4) * units.HOP           # the cost per step stays the same
    with pytest.raises(ValueError, match="whole 20 ms frames"):
        stream.step(torch.zeros(100))
    bidirectional = units.Units(units.HubertEncoder(10, 2, 2, 32, 8), 1, torch.randn(12, 32))
    with pytest.raises(ValueError, match="causal units with an attention window"):
        units.UnitStream(bidirectional)


def test_stage_trains_resumes_and_reports(tmp_path):
    from nanosdm import utils
    from nanosdm.corpus import spokenworld
    cfg = dict(data_entities=24, data_text_only_frac=0.25, data_text_docs=50, data_dialogues=2,
               data_eval_dialogues=2, seed=3, workers=2, device="cpu",
               data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"),
               units_k=12, units_k_targets=10, units_n_layer=2, units_n_head=2, units_d_model=32,
               units_layer=1, units_proj_dim=16, units_temperature=0.1, units_mask_prob=0.08,
               units_mask_len=10, units_unmasked_weight=0.0, units_warp=0.1, units_crop_seconds=1.0,
               units_batch_size=4, units_max_steps=6, units_lr=1e-3, units_warmup=2,
               units_weight_decay=0.01, units_grad_clip=1.0, units_kmeans_iters=5,
               units_kmeans_frames=5000, units_max_train_hours=0.0, units_ckpt_interval=2,
               units_targets="canonical", units_causal=False, units_window=0, units_ctc_steps=3, units_ctc_lr=1e-3)
    spokenworld.build(cfg)
    assert units.train(cfg, stop_step=3) is None                  # "killed" after 3 steps
    partial = torch.load(tmp_path / "out" / "units.pt", weights_only=True)
    assert partial["step"] == 3 and not partial["finished"]
    figures = units.train(cfg)                                     # resumes at step 3
    figures.update(metrics.evaluate_units_checkpoint(cfg))        # what the stage runner does next
    final = torch.load(tmp_path / "out" / "units.pt", weights_only=True)
    assert final["finished"] and final["step"] == 6 and [h[0] for h in final["history"]] == list(range(6))
    assert figures["units_k"] == 12 and figures["units_ctc_loss"] > 0    # the CTC phase ran, after the resumed steps
    # the figures are those of the saved units on the unseen voice's user turns ...
    path = str(tmp_path / "out" / "units.pt")
    wavs, phones, _ = units.load_utterances(cfg["data_dir"], "unseen_voice", speaker="user")
    quality, ids, labels, inventory = metrics.evaluate_units(
        units.Units.load(path), utils.load_checkpoint(path)["mfcc_centroids"], wavs, phones)
    assert {k: figures[f"units_{k}"] for k in quality} == {k: round(v, 4) for k, v in quality.items()}
    # ... and well above chance: the same units shuffled over the frames (PNMI ~0.06 on these ~1000
    # frames, not 0: a small sample makes any labelling look a little informative)
    flat = [p for utterance in labels for p in utterance]
    spoken = torch.tensor([p is not None for p in flat])
    phone_ids = torch.tensor([inventory.index(p) for p in flat if p is not None])
    g = torch.Generator().manual_seed(0)
    for system in ("mfcc", "hubert"):                              # measured: 0.34 and 0.24-0.30
        u = torch.cat(ids[system])[spoken]
        shuffled = lambda: u[torch.randperm(len(u), generator=g)]
        chance = max(metrics.unit_quality(shuffled(), phone_ids, 12, len(inventory))["pnmi"] for _ in range(10))
        assert figures[f"units_pnmi_{system}"] > 2 * chance, (system, figures[f"units_pnmi_{system}"], chance)
        # labelling every unit with its own phone beats labelling all frames with the commonest phone
        assert figures[f"units_phone_purity_{system}"] > 2 * torch.bincount(phone_ids).max().item() / len(phone_ids)
    assert (tmp_path / "out" / "plots" / "units_cooccurrence.png").exists()
    assert (tmp_path / "out" / "plots" / "units_utterance.png").exists()
    u = units.Units.load(str(tmp_path / "out" / "units.pt"))
    assert u.encode(torch.zeros(3200)).shape == (10,)


def test_ctc_finetuning_learns_the_characters_through_every_block():
    from nanosdm.corpus import espeak
    texts = ["the cat sat on the mat", "where is the lezis", "a blue kotan owns four dogs", "what colour is the ditum"]
    wavs = [torch.as_tensor(espeak.synthesize(t, v)[0]) for t, v in zip(texts, ["en-us", "en-us+f2", "en", "en-us+m3"])]
    stream = torch.cat([(w * 32767).round().short() for w in wavs])
    spans = list(zip(np.cumsum([0] + [len(w) for w in wavs[:-1]]).tolist(), [len(w) for w in wavs]))
    torch.manual_seed(0)
    encoder = units.HubertEncoder(n_targets=10, n_layer=3, n_head=2, d_model=32, proj_dim=8, causal=True, window=50)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cfg = dict(device="cpu", seed=0, units_layer=2, units_ctc_steps=60, units_ctc_lr=3e-3, units_batch_size=4,
               units_warp=0.0, units_warmup=5, units_weight_decay=0.0, units_grad_clip=1.0)
    history = units.ctc_finetune(encoder, stream, spans, texts, cfg)
    assert [h[0] for h in history] == list(range(60))
    first, last = history[0][1], np.mean([h[1] for h in history[-5:]])
    assert last < 0.6 * first, (first, last)
    after = encoder.state_dict()
    changed = lambda prefix: any(not torch.equal(after[k], before[k]) for k in after if k.startswith(prefix))
    assert all(changed(f"{p}") for p in ("conv1", "conv2", "transformer.blocks.0.", "transformer.blocks.2."))
    assert not changed("proj") and not changed("label_emb") and not changed("mask_emb")   # masked prediction's own
    assert torch.equal(after["mel_mean"], before["mel_mean"])
