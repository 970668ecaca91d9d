import torch

from nanosdm.depth import Depth, sample_logits


def tiny():
    torch.manual_seed(0)
    return Depth(d_temporal=24, n_q=4, text_vocab=30, card=16, n_layer=2, n_head=2, d_model=16).eval()


def test_generation_with_cache_equals_teacher_forced_forward():
    m = tiny()
    h, text = torch.randn(5, 24), torch.randint(30, (5,))
    codes = torch.randint(16, (5, 4))
    full = m(h, text, codes)
    assert full.shape == (5, 4, 16)
    got, logits = m.generate(h, text, force=codes)
    assert torch.equal(got, codes)
    assert torch.allclose(logits, full, atol=1e-4)


def test_each_codebook_depends_only_on_earlier_ones():
    m = tiny()
    h, text = torch.randn(3, 24), torch.randint(30, (3,))
    a = torch.randint(16, (3, 4))
    b = a.clone()
    b[:, 2:] = (b[:, 2:] + 1) % 16          # change codebooks 2 and 3
    la, lb = m(h, text, a), m(h, text, b)
    # position k reads codebook k-1: positions 0..2 see the same inputs
    assert torch.allclose(la[:, :3], lb[:, :3]) and not torch.allclose(la[:, 3], lb[:, 3])
    t2 = (text + 1) % 30                     # the text token drives position 0 and, through it, all
    assert not torch.allclose(m(h, t2, a)[:, 0], la[:, 0])


def test_greedy_generation_picks_each_argmax_in_turn():
    m = tiny()
    h, text = torch.randn(2, 24), torch.randint(30, (2,))
    codes, logits = m.generate(h, text, temperature=0)
    assert torch.equal(codes, logits.argmax(-1))
    assert torch.allclose(m(h, text, codes), logits, atol=1e-4)


def test_sampling_respects_top_k():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]]).repeat(200, 1)
    picks = sample_logits(logits, temperature=1.0, top_k=2)
    assert set(picks.tolist()) <= {1, 2} and len(set(picks.tolist())) == 2
    assert sample_logits(logits, 0, None).eq(1).all()
