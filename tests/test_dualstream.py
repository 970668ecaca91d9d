import math

import pytest
import torch

from nanosdm.dualstream import ZERO, DualStream, default_delays, delay, undelay

K, CARD, VOCAB = 3, 32, 50


def tiny(context=64, **kw):
    torch.manual_seed(0)
    return DualStream(VOCAB, CARD, K, n_layer=2, n_head=2, d_model=32, context=context,
                      depth_layers=1, depth_heads=2, depth_d_model=16, **kw).eval()


def random_tokens(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(VOCAB, (B, T, 1), generator=g)
    audio = torch.randint(CARD, (B, T, 2 * K), generator=g)
    return torch.cat([text, audio], 2)


def test_delay_then_undelay_is_identity():
    x = random_tokens(2, 10)
    delays = default_delays(K)
    assert delays == [0, 0, 1, 1, 0, 1, 1]
    assert default_delays(K, ear="units") == [0, 0, 1, 1, 0, 0, 0]     # a units frame's columns: heard at once
    assert tiny(ear="units").delays == default_delays(K, ear="units")
    y = delay(x, delays, -5)
    assert (y[:, 0, 2] == -5).all() and (y[:, 0, :2] == x[:, 0, :2]).all()
    assert torch.equal(y[:, 1:, 2], x[:, :-1, 2])
    assert torch.equal(undelay(y, delays), x[:, :9])
    odd = [0, 2, 0, 1, 3, 0, 0]
    assert torch.equal(undelay(delay(x, odd, 0), odd), x[:, :7])


def test_zero_token_embeds_to_zero_and_init_rows_exist():
    m = tiny()
    tokens = torch.full((1, 2, 1 + 2 * K), ZERO)
    assert m.embed(tokens).abs().max() == 0
    tokens[0, 1, 0] = 3
    assert torch.allclose(m.embed(tokens)[0, 1], m.text_emb.weight[3])
    init = m.init_tokens.view(1, 1, -1)
    assert m.embed(init).abs().sum() > 0       # the initial tokens are real rows
    assert m.text_emb.weight.shape[0] == VOCAB + 1 and m.audio_emb[0].weight.shape[0] == CARD + 1


def test_first_loss_near_log_card():
    m = tiny()
    m.text_head.weight.data.zero_()            # uniform text predictions: exactly ln V
    inputs, targets = m.inputs_targets(random_tokens(4, 20))
    _, _, losses = m(inputs, targets)
    assert abs(losses["text"].item() - math.log(VOCAB)) < 1e-4
    for k in range(K):   # small random heads: close to uniform
        assert abs(losses[f"audio_{k}"].item() - math.log(CARD)) < 0.1


def test_targets_masked_where_delays_leave_none():
    m = tiny()
    inputs, targets = m.inputs_targets(random_tokens(1, 5))
    assert (inputs[0, 0] == m.init_tokens).all()
    assert (targets[0, 0, 2:1 + K] == CARD).all()             # delayed codebooks: INIT at step 0
    _, _, a = m(inputs, targets)
    t2 = targets.clone()
    t2[0, 0, 2:1 + K] = CARD                                   # unchanged: the masked targets count for nothing
    assert torch.equal(a["audio"], m(inputs, t2)[2]["audio"])


def test_step_with_cache_equals_teacher_forced_forward():
    m = tiny()
    x = random_tokens(2, 12)
    inputs, targets = m.inputs_targets(x)
    logits, h = m(inputs)
    N = h.shape[0] * h.shape[1]
    audio_logits = m.depth(h.reshape(N, -1), targets[..., 0].reshape(N), targets[..., 1:1 + K].reshape(N, -1))
    audio_logits = audio_logits.view(2, 12, K, CARD)
    state = m.new_state(2)
    for t in range(12):
        out = m.step(state, x[:, t, 1 + K:], force_text=targets[:, t, 0], force_audio=targets[:, t, 1:1 + K])
        assert torch.allclose(out["text_logits"], logits[:, t], atol=1e-4)
        assert torch.allclose(out["audio_logits"], audio_logits[:, t], atol=1e-4)
        if t >= 1:   # frame t-1 complete, undelayed
            assert torch.equal(out["audio"], x[:, t - 1, 1:1 + K])
        assert torch.equal(state["prev"], targets[:, t])      # the column the model fed itself


def test_ear_mlp_starts_as_the_sum_and_streams_like_the_forward_pass():
    m, plain = tiny(ear_mlp=16), tiny()
    assert m.ear_mlp is not None and plain.ear_mlp is None
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("ear_mlp.")})
    x = random_tokens(2, 12)
    inputs, _ = m.inputs_targets(x)
    assert torch.equal(m.embed(inputs), plain.embed(inputs))     # zero output layer: the sum alone
    with torch.no_grad():
        m.ear_mlp[2].weight.normal_(std=0.5)
    assert not torch.allclose(m.embed(inputs), plain.embed(inputs))
    text_only = inputs.clone()
    text_only[..., 1:] = ZERO
    assert torch.equal(m.embed(text_only), plain.embed(text_only))   # no user heard: no ear term
    logits, _ = m(inputs)
    state = m.new_state(2)
    for t in range(12):   # the ear reads one column at a time: streaming equals the full pass
        out = m.step(state, x[:, t, 1 + K:], force_text=inputs[:, t + 1, 0] if t < 11 else None,
                     force_audio=inputs[:, t + 1, 1:1 + K] if t < 11 else None)
        assert torch.allclose(out["text_logits"], logits[:, t], atol=1e-4)


def test_ear_conv_starts_at_zero_is_causal_and_streams_like_the_forward_pass():
    m, plain = tiny(ear="units", ear_conv=8), tiny(ear="units")
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("ear_conv.")})
    T = 24      # longer than the convolution's reach (28 sub-steps = 10 frames of K = 3)
    assert m.ear_frames == 10
    with pytest.raises(ValueError, match="ear_conv"):
        tiny(ear_conv=-8)
    x = random_tokens(2, T)
    inputs, _ = m.inputs_targets(x)
    assert torch.equal(m.embed(inputs), plain.embed(inputs))     # zero output layer: the sum alone
    with torch.no_grad():
        m.ear_conv.out.weight.normal_(std=0.5)
    e = m.embed(inputs)
    assert not torch.allclose(e, plain.embed(inputs))
    changed = inputs.clone()
    changed[:, 15, 1 + K:] = (changed[:, 15, 1 + K:] + 1) % CARD    # one heard frame changed ...
    d = (m.embed(changed) - e).abs().amax((0, 2))
    assert d[:15].max() == 0 and d[15] > 0                       # ... changes nothing before it
    text_only = inputs.clone()
    text_only[..., 1:] = ZERO
    assert torch.equal(m.embed(text_only), plain.embed(text_only))   # no user heard: no ear term
    logits, _ = m(inputs)
    state = m.new_state(2)
    for t in range(T):   # the step reads the columns fed before: streaming equals the full pass
        out = m.step(state, x[:, t, 1 + K:], force_text=inputs[:, t + 1, 0] if t < T - 1 else None,
                     force_audio=inputs[:, t + 1, 1:1 + K] if t < T - 1 else None)
        assert torch.allclose(out["text_logits"], logits[:, t], atol=1e-4)


def test_ear_conv_reads_a_units_frame_once_at_eight_columns():
    # at n_q = 8 the units' 4 ids of a frame are each held twice (corpus/speech.ear_codes): the
    # convolution reads u1..u4 once, so its reach in frames is 28 / 4, and the repeats are not read
    kw = dict(n_layer=1, n_head=2, d_model=16, context=32, depth_layers=1, depth_heads=2, depth_d_model=16, ear="units")
    torch.manual_seed(0)
    m = DualStream(VOCAB, CARD, 8, ear_conv=8, **kw).eval()
    plain = DualStream(VOCAB, CARD, 8, **kw).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("ear_conv.")})
    assert (m.ear_sub, m.ear_frames) == (4, 7)
    with torch.no_grad():
        m.ear_conv.out.weight.normal_(std=0.5)
    g = torch.Generator().manual_seed(1)
    units = torch.randint(CARD, (1, 12, 4), generator=g)
    x = torch.cat([torch.randint(VOCAB, (1, 12, 1), generator=g), torch.randint(CARD, (1, 12, 8), generator=g),
                   units, units], 2)
    ear = lambda t: m.embed(t) - plain.embed(t)    # the convolution's term alone
    moved = x.clone()
    moved[:, 5, 1 + 8 + 4:] = (moved[:, 5, 1 + 8 + 4:] + 1) % CARD    # the repeats only
    assert torch.allclose(ear(moved), ear(x), atol=1e-6)
    moved[:, 5, 1 + 8] = (moved[:, 5, 1 + 8] + 1) % CARD                # a unit it reads
    assert not torch.allclose(ear(moved), ear(x), atol=1e-6)


def test_ear_init_from_units_embeds_alike_units_alike_and_leaves_the_rest():
    m, before = tiny(ear="units", ear_conv=8), tiny(ear="units", ear_conv=8)
    g = torch.Generator().manual_seed(0)
    c = torch.randn(20, 12, generator=g)
    c[1] = c[0] + 0.01 * torch.randn(12, generator=g)     # unit 1 sounds like unit 0
    m.init_ear_from_units(c)
    cos = lambda w, i, j: float(torch.nn.functional.cosine_similarity(w[i], w[j], dim=0))
    tables = [(m.audio_emb[s].weight, before.audio_emb[s].weight) for s in range(K, 2 * K)]
    for w, w0 in [(w.detach(), w0.detach()) for w, w0 in tables + [(m.ear_conv.emb.weight, before.ear_conv.emb.weight)]]:
        assert cos(w, 0, 1) > 0.99                          # near centroids, near rows
        assert abs(cos(w, 0, 5)) < 0.9                      # others not
        assert math.isclose(float(w[:20].std()), float(w0[:20].std()), rel_tol=1e-4)   # the table's spread kept
        assert torch.equal(w[20:], w0[20:])                 # rows past the units (and INIT) untouched
    for s in range(K):                                      # the model's own codec tables untouched
        assert torch.equal(m.audio_emb[s].weight, before.audio_emb[s].weight)
    assert not torch.equal(m.audio_emb[K].weight, m.audio_emb[K + 1].weight)   # a projection per table


def test_prefill_then_step_equals_stepping_all_the_way():
    m = tiny()
    x = random_tokens(1, 10)
    a = m.new_state(1)
    m.prefill(a, x[:, :6])
    b = m.new_state(1)
    _, targets = m.inputs_targets(x)
    for t in range(6):
        m.step(b, x[:, t, 1 + K:], force_text=targets[:, t, 0], force_audio=targets[:, t, 1:1 + K])
    for t in range(6, 10):
        oa = m.step(a, x[:, t, 1 + K:], 0, 0, 0, 0)
        ob = m.step(b, x[:, t, 1 + K:], 0, 0, 0, 0)
        assert torch.allclose(oa["text_logits"], ob["text_logits"], atol=1e-4)
        assert torch.equal(oa["audio"], ob["audio"])


def test_no_future_user_audio_changes_an_earlier_output():
    m = tiny()
    x = random_tokens(1, 12)
    y = x.clone()
    y[:, 7:, 1 + K:] = random_tokens(1, 5, seed=9)[..., 1 + K:]   # other user audio from step 7 on
    outs = []
    for seq in (x, y):
        state, o = m.new_state(1), []
        for t in range(12):
            o.append(m.step(state, seq[:, t, 1 + K:], 0, 0, 0, 0)["text_logits"])
        outs.append(torch.stack(o))
    # step t hears the user up to frame t - 1: outputs 0..7 are the same, later ones differ
    assert torch.allclose(outs[0][:8], outs[1][:8])
    assert not torch.allclose(outs[0][8:], outs[1][8:])


def test_generation_past_the_context_keeps_running():
    m = tiny(context=16)
    state = m.new_state(2)
    user = random_tokens(2, 50)[..., 1 + K:]
    frames = [m.step(state, user[:, t])["audio"] for t in range(50)]
    assert state["t"] == 50 and state["cache"].length <= 16
    assert all(f.shape == (2, K) and (f < CARD).all() for f in frames[1:])


def test_text_only_mode_matches_the_forward_pass():
    m = tiny()
    idx = torch.randint(VOCAB, (2, 5))
    new = m.generate_text(idx, 4, temperature=0)
    seq = torch.cat([idx, new], 1)
    cols = torch.cat([seq[..., None], torch.full((2, 9, 2 * K), ZERO)], 2)
    logits, _ = m(cols)
    assert torch.equal(logits[:, 4:8].argmax(-1), new)


def test_init_from_text_lm_copies_weights():
    from nanosdm.textlm import TextLM
    torch.manual_seed(1)
    lm = TextLM(VOCAB, 2, 2, 32, block_size=64)
    m = tiny()
    m.init_from_text_lm(lm.state_dict())
    idx = torch.randint(VOCAB, (1, 7))
    assert torch.allclose(m.generate_text(idx, 5), lm.generate(idx, 5, temperature=0, stop=-1))
    codebooks = torch.randn(K, CARD, 8)
    m.init_from_codec(codebooks)
    e = m.audio_emb[0].weight[:CARD]
    # the embedding is a linear map of the codebook: same rank structure
    assert torch.linalg.matrix_rank(e) <= 8
    # the user's table of codebook 0 maps the same codebook through another projection: the model
    # can tell the same sound in its own channel from the user's
    u = m.audio_emb[K].weight[:CARD]
    assert torch.linalg.matrix_rank(u) <= 8 and (u - e).abs().max() > 0.1 * e.abs().max()


def test_delays_must_match_streams():
    with pytest.raises(AssertionError):
        DualStream(VOCAB, CARD, K, 1, 2, 32, 16, delays=[0, 1])


def test_turn_tokens_can_weigh_more_in_the_text_loss():
    from nanosdm.tokenizer import ASSISTANT, EOS, PAD, USER
    m = tiny()
    x = random_tokens(2, 24)
    x[:, ::3, 0] = ASSISTANT                          # a third of the text targets are turn tokens
    x[:, 1::3, 0] = PAD
    inputs, targets = m.inputs_targets(x)
    base = m(inputs, targets)[2]["text"].item()
    m.set_text_weights(0.5, 4.0)
    assert m.text_weights[[USER, ASSISTANT, EOS]].tolist() == [4.0] * 3 and m.text_weights[PAD] == 0.5
    assert m.config["turn_weight"] == 4.0             # saved with the checkpoint, so a reload agrees
    turn_ce = torch.nn.functional.cross_entropy(m(inputs)[0][targets[..., 0] == ASSISTANT],
                                                targets[..., 0][targets[..., 0] == ASSISTANT]).item()
    weighted = m(inputs, targets)[2]["text"].item()
    assert (weighted - base) * (turn_ce - base) > 0   # the loss moves toward the turn tokens' own CE
