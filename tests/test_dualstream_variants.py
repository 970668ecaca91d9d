"""The dual-stream model's two other paradigms: Mini-Omni's parallel heads (with its delays and batch
parallel decoding) and speech to speech without the inner monologue (text=False)."""
import pytest
import torch

from nanosdm import utils
from nanosdm.dualstream import ZERO, DualStream, default_delays, load_model, mini_omni_delays
from nanosdm.live import free_run

K, CARD, VOCAB = 3, 32, 50
VARIANTS = [dict(heads="parallel"), dict(text=False), dict(heads="parallel", text=False)]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(context=64, **kw):
    torch.manual_seed(0)
    return DualStream(VOCAB, CARD, K, n_layer=2, n_head=2, d_model=32, context=context,
                      depth_layers=1, depth_heads=2, depth_d_model=16, **kw).eval()


def random_tokens(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randint(VOCAB, (B, T, 1), generator=g), torch.randint(CARD, (B, T, 2 * K), generator=g)], 2)


def test_parallel_heads_use_mini_omnis_delays_and_no_depth_transformer():
    m = tiny(heads="parallel")
    assert m.delays == mini_omni_delays(K) == [0, 1, 2, 3, 0, 1, 1]   # text leads, codebook k at k + 1
    assert m.depth is None and len(m.audio_heads) == K
    x = random_tokens(1, 8)
    inputs, targets = m.inputs_targets(x)
    for k in range(K):   # codebook k of frame f is the target of step f + k + 1, INIT before
        assert torch.equal(targets[0, k + 1:, 1 + k], x[0, :8 - k - 1, 1 + k])
        assert (targets[0, :k + 1, 1 + k] == CARD).all()
    assert torch.equal(targets[0, :, 0], x[0, :, 0])
    # the head of codebook k reads codebook k - 1 of the same frame (in the previous step's input):
    # changing codebook 0 of frame 2 changes the logits of codebook 1 at step 3 (frame 2) only from there
    _, h = m(inputs)
    y = x.clone()
    y[0, 2, 1] = (x[0, 2, 1] + 1) % CARD
    _, h2 = m(m.inputs_targets(y)[0])
    a, b = m.audio_logits(h[0], None, None), m.audio_logits(h2[0], None, None)
    assert torch.equal(a[:4], b[:4]) and not torch.allclose(a[4, 1], b[4, 1])
    # the default stays Moshi's
    assert tiny().delays == default_delays(K) and tiny().audio_heads is None


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_step_with_cache_equals_teacher_forced_forward(variant):
    m = tiny(**variant)
    D, T = max(m.delays), 12
    x = random_tokens(2, T)
    inputs, targets = m.inputs_targets(x)
    logits, h = m(inputs)
    N = 2 * T
    audio_logits = m.audio_logits(h.reshape(N, -1), targets[..., 0].reshape(N), targets[..., 1:1 + K].reshape(N, -1))
    audio_logits = audio_logits.view(2, T, K, CARD)
    state = m.new_state(2)
    for t in range(T):
        out = m.step(state, x[:, t, 1 + K:], force_text=targets[:, t, 0], force_audio=targets[:, t, 1:1 + K])
        if m.text:
            assert torch.allclose(out["text_logits"], logits[:, t], atol=1e-4)
        else:
            assert out["text"] is None and out["text_logits"] is None and logits is None
        assert torch.allclose(out["audio_logits"], audio_logits[:, t], atol=1e-4)
        assert (out["audio"] is None) == (t < D)
        if t >= D:   # frame t - D complete, undelayed
            assert torch.equal(out["audio"], x[:, t - D, 1:1 + K])
        assert torch.equal(state["prev"], targets[:, t])      # the column the model fed itself


def test_batch_parallel_decoding_speaks_the_text_only_copys_text():
    m = tiny(heads="parallel")
    B, F, D = 2, 10, K
    user = random_tokens(B, F, seed=3)[..., 1 + K:]
    silence = torch.zeros(K, dtype=torch.long)
    empty = torch.zeros(B, 0, 1 + 2 * K, dtype=torch.long)
    text, codes = free_run(m, empty, user, silence, (0, 0, 0, 0), parallel_decoding=True)
    assert text.shape == (B, F) and codes.shape == (B, F, K)
    heard = torch.cat([user, silence.expand(B, D, K)], 1)     # free_run runs D more steps on silence
    # the text-only copy alone: its own audio ZERO, the same user audio; greedy text, one pass
    said = torch.cat([text, torch.zeros(B, D, dtype=torch.long)], 1)[..., None]
    mute = torch.cat([said, torch.full((B, F + D, K), ZERO), heard], 2)
    inputs, _ = m.inputs_targets(mute)
    assert (inputs[..., 1:1 + K] == ZERO).all()              # it never hears a voice of its own
    assert torch.equal(m(inputs)[0][:, :F].argmax(-1), text)
    # the speaking copy: with that text and its own codes in its input, greedy codes are the ones it said
    spoken = torch.cat([codes, torch.zeros(B, D, K, dtype=torch.long)], 1)
    x = torch.cat([said, spoken, heard], 2)
    inputs, targets = m.inputs_targets(x)
    _, h = m(inputs)
    greedy = m.audio_logits(h.reshape(-1, 32), None, None).argmax(-1).view(B, F + D, K)
    for k in range(K):   # codebook k of frame f came out at step f + k + 1 (the text is known up to step F - 1)
        assert torch.equal(greedy[:, k + 1:F, k], codes[:, :F - 1 - k, k])
    # without the text-only copy the speaking copy writes other text (it hears its own voice):
    # the test above would see the difference
    own, _ = free_run(m, empty, user, silence, (0, 0, 0, 0))
    assert not torch.equal(own, text)


def test_without_text_the_model_never_reads_a_text_token():
    m, full = tiny(text=False), tiny()
    assert m.text_emb is None and m.text_head is None
    x = random_tokens(2, 12)
    inputs, targets = m.inputs_targets(x)
    assert (inputs[..., 0] == ZERO).all() and (targets[..., 0] == ZERO).all()
    # any text in the delayed columns, inputs and targets alike: nothing moves
    a_in, a_tg, b_in, b_tg = inputs.clone(), targets.clone(), inputs.clone(), targets.clone()
    a_in[..., 0], a_tg[..., 0] = random_tokens(2, 12, seed=1)[..., 0], random_tokens(2, 12, seed=2)[..., 0]
    b_in[..., 0], b_tg[..., 0] = random_tokens(2, 12, seed=3)[..., 0], random_tokens(2, 12, seed=4)[..., 0]
    _, ha, la = m(a_in, a_tg)
    _, hb, lb = m(b_in, b_tg)
    assert torch.equal(ha, hb) and torch.equal(la["loss"], lb["loss"])
    assert "text" not in la and torch.equal(la["loss"], la["audio"])     # the loss has no text term
    assert "text" in full(inputs.clamp(min=0), targets.clamp(min=0))[2]  # (the full model's has)
    # streaming: a history with other text, the same outputs; step() writes no text
    y = x.clone()
    y[..., 0] = random_tokens(2, 12, seed=5)[..., 0]
    outs = []
    for seq in (x, y):
        state = m.new_state(2)
        m.prefill(state, seq[:, :6])
        outs.append([m.step(state, seq[:, t, 1 + K:], 0, 0, 0, 0) for t in range(6, 12)])
    for oa, ob in zip(*outs):
        assert oa["text"] is None and torch.equal(oa["audio_logits"], ob["audio_logits"])
    text, codes = free_run(m, x[:, :6], x[:, 6:, 1 + K:], x[0, 0, 1 + K:], (0, 0, 0, 0))
    assert text is None and codes.shape == (2, 6, K)
    with pytest.raises(ValueError):
        m.generate_text(torch.zeros(1, 3, dtype=torch.long), 2)


@pytest.mark.parametrize("variant", [dict()] + VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) or "moshi")
def test_a_short_run_lowers_every_streams_loss(variant):
    m = tiny(**variant).train()
    x = random_tokens(4, 12).repeat(1, 2, 1)   # a pattern that repeats: learnable
    inputs, targets = m.inputs_targets(x)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        _, _, losses = m(inputs, targets)
        first = first or {k: v.item() for k, v in losses.items()}
        losses["loss"].backward()
        opt.step()
        opt.zero_grad()
    names = ["text"] * m.text + [f"audio_{i}" for i in range(K)]
    assert set(names) <= set(losses) and ("text" in losses) == m.text
    for k in names:
        assert losses[k].item() < 0.7 * first[k], (k, first[k], losses[k].item())


def test_a_checkpoint_without_the_keys_loads_as_moshis_model(tmp_path):
    m = tiny()
    config = {k: v for k, v in m.config.items() if k not in ("heads", "text")}   # saved before the variants
    path = str(tmp_path / "old.pt")
    utils.save_checkpoint(path, dict(model=m.state_dict(), config=config))
    old = load_model(path)
    assert old.depth is not None and old.text and old.delays == default_delays(K)
    inputs, targets = m.inputs_targets(random_tokens(1, 8))
    assert torch.equal(old(inputs, targets)[2]["loss"], m(inputs, targets)[2]["loss"])
    for variant in VARIANTS:   # and the variants come back as saved
        v = tiny(**variant)
        utils.save_checkpoint(path, dict(model=v.state_dict(), config=v.config))
        back = load_model(path)
        assert back.config == v.config and torch.equal(back(inputs, targets)[2]["loss"], v(inputs, targets)[2]["loss"])


def test_parameter_counts_differ_by_the_parts_each_variant_drops():
    full, par, mute = tiny(), tiny(heads="parallel"), tiny(text=False)
    d = 32
    depth = utils.count_params(full.depth)
    assert utils.count_params(par) == utils.count_params(full) - depth + K * d * CARD
    text_parts = (VOCAB + 1) * d + VOCAB * d + VOCAB * 16   # embedding, head, the depth's text rows
    assert utils.count_params(mute) == utils.count_params(full) - text_parts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from test_dualtrain import make_tiny_run
    return make_tiny_run(tmp_path_factory.mktemp("run"))


@pytest.mark.parametrize("variant", [dict(dual_heads="parallel"), dict(dual_text=False)], ids=["parallel", "no_text"])
def test_stage_align_trains_each_variant_from_the_text_lm(tiny_run, tmp_path, variant):
    import os
    import shutil
    from nanosdm import dualtrain
    cfg = dict(tiny_run, out_dir=str(tmp_path / "out"), **variant)
    shutil.copytree(tiny_run["out_dir"], cfg["out_dir"])
    metrics = dualtrain.train(cfg, "align")
    ckpt = utils.load_checkpoint(os.path.join(cfg["out_dir"], "align.pt"))
    model = load_model(os.path.join(cfg["out_dir"], "align.pt"))
    assert ckpt["step"] == 6 and model.config["heads"] == variant.get("dual_heads", "depth")
    assert model.text == variant.get("dual_text", True) == ("align_text_loss" in metrics)
    rows = ckpt["history"]["train"]
    if not model.text:    # text-only batches (align_text_frac 0.3) become speech batches: every step has audio
        assert all("audio" in r and "text" not in r and "text_only" not in r for r in rows)
    else:                 # the blocks and the text head started from the text LM's
        lm = utils.load_checkpoint(os.path.join(cfg["out_dir"], "text.pt"))["model"]
        cos = torch.nn.functional.cosine_similarity(ckpt["model"]["text_head.weight"].flatten(), lm["head.weight"].flatten(), 0)
        assert cos > 0.8
    assert 0 < metrics["align_audio_loss"] < 10
