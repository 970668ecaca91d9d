"""The unit vocoder: the length regulator's round trip, output length, streaming = offline, training."""
import pytest
import torch

from nanosdm import vocoder
from nanosdm.codec import FRAME, Codec
from nanosdm.units import dedup

TINY_CODEC = dict(dim=32, sub_dim=16, enc_layers=1, dec_layers=1, sub_layers=1, kernel=3, latent_dim=8,
                  n_q=2, codebook_size=16)


pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    codec = Codec(**TINY_CODEC).eval()
    voc = vocoder.Vocoder(n_units=12, latent_dim=8, dim=16, kernel=3, dur_layers=1, frame_layers=1, latent_layers=1).eval()
    return voc, codec


def test_expand_round_trip():
    values, durations = torch.tensor([5, 9, 5, 2]), torch.tensor([3, 1, 2, 4])
    runs = vocoder.expand(values, durations)
    assert runs[0].tolist() == [5, 5, 5, 9, 5, 5, 2, 2, 2, 2]
    assert runs[1].tolist() == [0, 1, 2, 0, 0, 1, 0, 1, 2, 3]           # place in the run
    assert runs[2].tolist() == [3, 3, 3, 1, 2, 2, 4, 4, 4, 4]           # the run's length
    v, d = dedup(runs[0])
    assert v.tolist() == values.tolist() and d.tolist() == durations.tolist()
    assert torch.equal(vocoder.frame_runs(runs[0]), runs)
    assert vocoder.duration_frames(torch.tensor([-3.0, 0.0, 1.1])).tolist() == [1, 1, 3]   # at least one frame


def test_output_length_matches_units(models):
    voc, codec = models
    values, durations = torch.tensor([1, 4, 7, 3, 1]), torch.tensor([2, 3, 1, 5, 2])   # 13 frames -> 4 codec frames
    wav = voc.synthesize(values, codec, durations=durations)
    assert wav.shape == (4 * FRAME,)
    predicted = vocoder.duration_frames(voc.durations(values[None])[0][0])
    assert voc.synthesize(values, codec).shape == (-(-int(predicted.sum()) // 4) * FRAME,)


def test_streamed_audio_equals_offline(models):
    voc, codec = models
    values = torch.tensor([1, 4, 7, 3, 1, 9, 2, 11, 5, 6, 0, 8])
    offline = voc.synthesize(values, codec)
    state, chunks = voc.new_state(codec), []
    for i in range(0, len(values), 5):          # omega = 5 units at a time
        out, state = voc.stream(values[i:i + 5], state, codec)
        chunks.append(out)
    out, state = voc.stream(values[:0], state, codec, last=True)
    chunks.append(out)
    streamed = torch.cat(chunks)
    assert streamed.shape == offline.shape
    assert torch.allclose(streamed, offline, atol=1e-5)


def test_short_training_lowers_the_losses(models):
    _, codec = models
    torch.manual_seed(1)
    voc = vocoder.Vocoder(n_units=12, latent_dim=8, dim=16, kernel=3, dur_layers=1, frame_layers=1, latent_layers=1)
    # a toy "language": each unit has its own latent and its own duration
    table, lengths = torch.randn(12, 8), torch.randint(1, 5, (12,))
    values = torch.randint(12, (400,))
    values = values[torch.cat([torch.tensor([True]), values[1:] != values[:-1]])]
    frames = vocoder.expand(values, lengths[values])[0]
    n = len(frames) // 4
    latent = table[frames[:n * 4]].reshape(n, 4, 8).mean(1)
    wav = codec.decode_latent(latent[None], codec.decoder_state(1))[0][0].detach()
    streams = (frames[:n * 4], latent, wav)
    opt = torch.optim.AdamW(voc.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(40):
        lat, dur, mel = vocoder.losses(voc, codec, vocoder.get_batch(streams, 8, 6, gen), 0.1)
        loss = lat + dur + 0.1 * mel
        first = first or (lat.item(), dur.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert lat.item() < 0.7 * first[0] and dur.item() < 0.7 * first[1]
