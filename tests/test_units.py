import pytest
import torch

from nanosdm import units


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


def test_a_stretched_mel_moves_the_formants_and_the_units_hear_it(tmp_path):
    mel = torch.zeros(1, units.N_MELS, 5)
    mel[:, 20] = 1.0                                        # one formant, at band 20
    assert torch.equal(units.stretch_mel(mel, torch.ones(1, 1)), mel)
    moved = units.stretch_mel(mel, torch.full((1, 1), 1.25))     # band m reads band 1.25 m: 20 -> 16
    assert moved[0, :, 0].argmax() == 16 and moved[0, 16, 0] == 1.0
    u = causal_units(tmp_path)
    torch.manual_seed(3)
    wav = 0.1 * torch.randn(30 * units.HOP)
    assert torch.equal(u.encode(wav, stretch=1.0), u.encode(wav))
    assert not torch.allclose(u.features(wav, stretch=1.15), u.features(wav))
    # read in pieces, a stretched stream is the same as in one pass
    assert torch.allclose(u.features(wav[None], piece_frames=7, stretch=0.9)[0], u.features(wav, stretch=0.9), atol=1e-5)


def test_a_warp_with_knots_moves_low_and_high_bands_apart_and_keeps_their_order():
    torch.manual_seed(4)
    mel = torch.randn(64, units.N_MELS, 3)
    assert torch.equal(units.warp_mel(mel, 0.0, knots=3), mel)
    ramp = torch.arange(units.N_MELS, dtype=torch.float)[None, :, None].repeat(64, 1, 1)
    warped = units.warp_mel(ramp, 0.15, torch.Generator().manual_seed(0), knots=3)[..., 0]   # the band each reads
    assert (warped.diff(dim=1) >= 0).all()                              # monotone: no band order flips
    factor = warped[:, 1:] / torch.arange(1, units.N_MELS)
    assert ((factor - 1).abs() <= 0.15 + 1e-5).all()
    spread = factor.max(1).values - factor.min(1).values               # not one factor per example
    assert spread.mean() > 0.05
    uniform = units.warp_mel(ramp, 0.15, torch.Generator().manual_seed(0))[:, 1:20, 0] / torch.arange(1, 20)
    assert uniform.std(1).max() < 1e-4                                  # knots=1: one factor a clip
