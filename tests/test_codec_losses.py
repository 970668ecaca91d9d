"""The codec's STFT discriminator: its hinge loss and the decoder's adversarial and feature-matching losses
(the mel loss is tested with the codec it trains, in test_codec.py)."""
import pytest
import torch

from nanosdm import codec_losses

pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py


def test_adversarial_losses():
    torch.manual_seed(8)
    disc = codec_losses.Discriminator()
    real, fake = torch.randn(2, 4000) * 0.1, (torch.randn(2, 4000) * 0.1).requires_grad_()
    d_loss = codec_losses.discriminator_loss(disc, real, fake)
    assert d_loss.item() == pytest.approx(2.0, abs=0.5)               # hinge at logits ~ 0: 1 + 1
    adv, fm = codec_losses.generator_adv_loss(disc, real, fake)
    (adv + fm).backward()
    assert fake.grad.abs().sum() > 0 and torch.isfinite(fake.grad).all()
    assert codec_losses.generator_adv_loss(disc, real, real.clone())[1].item() == 0.0  # same audio, same features
