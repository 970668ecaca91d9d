"""live.py: the live loop equals the teacher-forced model, and the scenarios put their events
where their records say."""
import pytest
import torch

from nanosdm import live
from nanosdm.eval import duplex
from nanosdm.live import monologue_parts
from nanosdm.tokenizer import ASSISTANT, EOS, EPAD, PAD, USER
from nanosdm.corpus import spokenworld
from nanosdm.codec import FRAME, Codec
from nanosdm.dualstream import DualStream

K, CARD, VOCAB = 3, 32, 50


def tiny_model():
    torch.manual_seed(0)
    return DualStream(VOCAB, CARD, K, n_layer=2, n_head=2, d_model=32, context=64,
                      depth_layers=1, depth_heads=2, depth_d_model=16).eval()


def tiny_codec():
    torch.manual_seed(1)
    codec = Codec(dim=32, sub_dim=16, enc_layers=1, dec_layers=1, sub_layers=1, latent_dim=8, n_q=K, codebook_size=CARD)
    codec.quantizer.embed.normal_()          # spread the untrained codebooks so codes vary
    return codec.eval()


def test_live_loop_equals_the_teacher_forced_model():
    model, codec = tiny_model(), tiny_codec()
    g = torch.Generator().manual_seed(0)
    T, n_script, D = 20, 6, max(model.delays)
    wav = 0.3 * torch.randn(T * FRAME, generator=g)
    script_text = torch.randint(8, VOCAB, (n_script,), generator=g)
    script_codes = torch.randint(CARD, (n_script, K), generator=g)
    out = live.live(model, codec, wav, script_text, script_codes, temps=(0, 0, 0, 0))   # greedy
    assert out["frames"] == T and len(out["text"]) == T and out["wav"].shape == (T * FRAME,)
    assert out["text"][:n_script] == script_text.tolist()
    assert torch.equal(out["codes"][:n_script], script_codes)
    # the same conversation, teacher-forced in one pass: the user's codes from the whole wav at once
    user = codec.encode(wav[None])[0].T                              # [T, K]
    x = torch.cat([torch.tensor(out["text"])[:, None], out["codes"], user], 1)[None]
    inputs, targets = model.inputs_targets(x)
    logits, h = model(inputs)
    greedy = logits[0].argmax(-1)
    assert greedy[n_script:].tolist() == out["text"][n_script:]     # every free step, the same token
    audio_logits = model.depth(h[0], targets[0, :, 0], targets[0, :, 1:1 + K])   # [T, K, card]
    for t in range(n_script + D, T - D):                             # frames the loop sampled itself
        step_codes = targets[0, t, 1:1 + K]
        assert torch.equal(audio_logits[t].argmax(-1), step_codes), t
    # and the voice is the codec's decoding of those codes
    want = codec.decode(out["codes"][:T - D].T[None])[0]
    assert torch.allclose(out["wav"][:(T - D) * FRAME], want, atol=1e-4)


def test_live_loop_decodes_in_parallel_as_the_batched_free_run():
    # Mini-Omni's batch parallel decoding, live at batch 1 (two rows a step), says what free_run says
    model, codec = tiny_model(), tiny_codec()
    wav = 0.3 * torch.randn(10 * FRAME, generator=torch.Generator().manual_seed(2))
    session = live.LiveSession(model, codec, temps=(0, 0, 0, 0), parallel_decoding=True)
    steps = [session.step(wav[t * FRAME:(t + 1) * FRAME]) for t in range(10)]
    user = codec.encode(wav[None])[0].T[None]                        # [1, T, K]
    silence = live.silence_codes(codec)
    text, codes = live.free_run(model, torch.zeros(1, 0, 1 + 2 * K, dtype=torch.long), user, silence,
                                (0, 0, 0, 0), parallel_decoding=True)
    D = max(model.delays)
    assert [s["text"] for s in steps] == text[0].tolist()
    assert torch.equal(torch.stack([s["codes"] for s in steps[D:]]), codes[0, :10 - D])


def test_live_loop_is_reproducible_with_a_seed_and_times_its_parts():
    model, codec = tiny_model(), tiny_codec()
    wav = 0.3 * torch.randn(12 * FRAME, generator=torch.Generator().manual_seed(3))
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(live.live(model, codec, wav))                  # sampled (Moshi's temperatures)
    assert runs[0]["text"] == runs[1]["text"] and torch.equal(runs[0]["codes"], runs[1]["codes"])
    secs = runs[0]["seconds"]
    assert all(secs[p] > 0 for p in ("codec_enc", "temporal", "depth", "codec_dec"))
    assert sum(secs[p] for p in ("codec_enc", "temporal", "depth", "codec_dec")) <= secs["total"]


class FakeTok:
    """Pieces by id: 10 '▁the', 11 '▁kot', 12 'an', 13 '▁is', 14 '▁red'."""
    pieces = {10: "\u2581the", 11: "\u2581kot", 12: "an", 13: "\u2581is", 14: "\u2581red"}

    class sp:
        pass

    def __init__(self):
        self.sp = type("SP", (), {"id_to_piece": lambda _, i: self.pieces[i]})()

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids).replace("\u2581", " ").strip()


def test_monologue_segments_place_the_models_words_in_time():
    from nanosdm.tokenizer import ASSISTANT, EOS, PAD, USER
    ids = [PAD, USER, 11, 12, EOS, PAD, ASSISTANT, 10, 11, 12, PAD, 13, 14, EOS, PAD]
    segs = duplex.monologue_segments(FakeTok(), ids)
    assert len(segs) == 1                                            # the user's words are not the model's
    s = segs[0]
    assert s["text"] == "the kotan is red"
    assert [w for w, _ in s["words"]] == ["the", "kotan", "is", "red"]
    assert s["start"] == pytest.approx(7 * 0.08)                     # at its first token (the marker is a frame before)
    assert [t for _, t in s["words"]][1:] == pytest.approx([8 * 0.08, 11 * 0.08, 12 * 0.08])
    assert s["end"] == pytest.approx(12 * 0.08 + duplex.WORD_S)


def test_vad_segments_merge_short_gaps():
    wav = torch.zeros(16000 * 4)
    wav[16000:24000] = 0.5                    # 1.0-1.5 s
    wav[28000:32000] = 0.5                    # 1.75-2.0 s: 0.25 s later, merged
    wav[48000:56000] = 0.5                    # 3.0-3.5 s: a new stretch
    segs = duplex.vad_segments(wav)
    assert [(s["start"], s["end"]) for s in segs] == [(1.0, 2.0), (3.0, 3.5)]


@pytest.fixture(scope="module")
def world():
    pytest.importorskip("espeakng_loader")
    return [e for e in spokenworld.make_world(20, 0.0, seed=0)]


def rms(x, s, e):
    x = x[int(s * 16000):int(e * 16000)]
    return float(x.pow(2).mean().sqrt()) if len(x) else 0.0


@pytest.mark.parametrize("kind", duplex.KINDS)
def test_scenarios_put_their_events_where_the_record_says(world, kind):
    sc = duplex.scenario(kind, 5, world, ["en-us+m3"])
    ev, user, model = sc["events"], sc["user"], sc["model"]
    assert sc["kind"] == kind and sc["answer"] and sc["question"]
    end = len(user) / 16000
    if kind == "pause":
        assert 0.5 - 0.01 <= ev["pause_end"] - ev["pause_start"] <= 1.5 + 0.3
        assert rms(user, ev["pause_start"] + 0.03, ev["pause_end"] - 0.03) < 1e-3      # silent inside the pause
        assert rms(user, ev["pause_start"] - 0.3, ev["pause_start"]) > 0.01             # speech on both sides
        assert rms(user, ev["pause_end"], ev["pause_end"] + 0.3) > 0.01
    if kind in ("pause", "turn"):
        assert rms(user, ev["turn_end"] + 0.03, end) < 1e-3 and end - ev["turn_end"] >= duplex.LISTEN_S - 0.01
        assert rms(user, ev["turn_end"] - 0.3, ev["turn_end"]) > 0.01
        assert sc["script_s"] == 0                                    # the model's channel is all its own
        assert rms(model, 0, ev["turn_end"]) < 1e-3                   # (the corpus would answer after the end)
    if kind == "interrupt":
        assert ev["reply_start"] < ev["interrupt_start"] < ev["interrupt_end"]
        assert sc["script_s"] == pytest.approx(ev["interrupt_start"], abs=1e-3)
        assert rms(model, ev["reply_start"], ev["interrupt_start"]) > 0.01            # answering when cut in on
        assert rms(user, ev["interrupt_start"], ev["interrupt_start"] + 0.3) > 0.01
    if kind == "backchannel":
        assert ev["reply_start"] < ev["backchannel_start"] < ev["backchannel_end"] < ev["reply_end"]
        assert rms(user, ev["backchannel_start"], ev["backchannel_end"]) > 0.01
        assert rms(model, ev["backchannel_start"] - 0.3, ev["backchannel_start"]) > 0.01
    if kind == "silence":
        assert ev["silence_end"] - ev["silence_start"] == pytest.approx(duplex.SILENCE_S, abs=0.01)
        assert rms(user, ev["silence_start"], end) < 1e-3 and rms(model, ev["silence_start"] + 0.05, end) < 1e-3
        assert rms(model, ev["silence_start"] - 0.5, ev["silence_start"]) > 0.01      # it has just answered


def test_an_unknown_scenario_kind_is_named():
    with pytest.raises(ValueError, match="unknown scenario kind 'chat'.*pause, turn"):
        duplex.scenario("chat", 0, spokenworld.make_world(5, 0.0, seed=0), ["en-us+m3"])
    from nanosdm.eval.duplex import score
    with pytest.raises(ValueError, match="unknown scenario kind"):
        score("chat", {}, [])


def test_monologue_parts_split_what_was_heard_from_what_was_said():
    ids = [PAD, USER, 10, 11, EPAD, 12, EOS, PAD, PAD, ASSISTANT, 20, PAD, 21, EOS, PAD, 30]
    heard, said = monologue_parts(ids)
    assert heard == [10, 11, 12] and said == [20, 21]


def test_qa_batch_hears_the_question_then_silence():
    import numpy as np
    from nanosdm.live import qa_batch

    class FakeStreams:       # one dialogue of 40 frames, K = 2; the user never stops talking
        assistant = np.zeros((40, 2))
        dialogues = [dict(offset=0, frames=40)]

        def window(self, start, length):
            x = np.zeros((length, 5), dtype=np.int64)
            x[:, 3:] = 7                              # the user's codes: 7 everywhere
            return x

    silence = torch.tensor([1, 2])
    q = dict(start=0.8, end=1.6)                      # frames 10 .. 19
    hist, user, starts, ends = qa_batch(FakeStreams(), [(0, q, None)], 4, silence, np.array([0, 1, 2, 1, 2]))
    assert hist.shape == (1, 4, 5) and starts == [10] and ends == [20]
    assert (user[0, :10] == 7).all()                  # the question, as recorded
    assert (user[0, 10:] == silence).all()            # then the user is quiet while the model answers
    assert user.shape[1] == 10 + int(4.0 / 0.08)


# -----------------------------------------------------------------------------
# the user heard through the causal units (dual_ear=units)

def test_the_units_ear_feeds_the_live_loop_what_the_speech_stage_stored(tmp_path):
    """A model trained with dual_ear=units hears, 80 ms at a time, the very unit ids the speech
    stage wrote into its user stream (ear_codes of the whole channel): the causal units stream."""
    from test_units import causal_units
    from nanosdm.corpus.speech import ear_codes
    units = causal_units(tmp_path)
    torch.manual_seed(0)
    model = DualStream(VOCAB, CARD, 4, n_layer=2, n_head=2, d_model=32, context=64, depth_layers=1,
                       depth_heads=2, depth_d_model=16, ear="units").eval()
    codec = Codec(dim=32, sub_dim=16, enc_layers=1, dec_layers=1, sub_layers=1, latent_dim=8, n_q=4,
                  codebook_size=CARD).eval()
    wav = 0.3 * torch.randn(10 * FRAME, generator=torch.Generator().manual_seed(4))
    stored = ear_codes(units, wav, 10, 4)                              # [10, 4]: frame t's 4 units
    assert stored.shape == (10, 4) and stored.max() < units.k
    session = live.LiveSession(model, codec, temps=(0, 0, 0, 0), ear=units)
    heard = torch.stack([session.step(wav[t * FRAME:(t + 1) * FRAME])["user_codes"] for t in range(10)])
    assert torch.equal(heard, torch.from_numpy(stored.astype("int64")))
    with pytest.raises(ValueError, match="hears the user through the units"):
        live.LiveSession(model, codec)
    # its silence is the units' silence; a codec model's, the codec's
    assert torch.equal(live.user_silence(codec, units), torch.from_numpy(ear_codes(units, torch.zeros(4 * FRAME), 4, 4)[-1].astype("int64")))
    assert torch.equal(live.user_silence(codec), live.silence_codes(codec))


def test_a_units_ear_model_starts_its_user_tables_apart_from_the_codec(tmp_path):
    codebooks = torch.randn(4, CARD, 8)
    for ear in ("codec", "units"):
        torch.manual_seed(0)
        m = DualStream(VOCAB, CARD, 4, n_layer=2, n_head=2, d_model=32, context=64, depth_layers=1,
                       depth_heads=2, depth_d_model=16, ear=ear)
        m.init_from_codec(codebooks)
        user = m.audio_emb[4].weight[:CARD]
        low_rank = torch.linalg.matrix_rank(user) <= 8                 # a projection of an 8-dim codebook
        assert low_rank == (ear == "codec"), ear
        assert m.config["ear"] == ear
    # a frame's four user rows together about as large as a text row (as the codec tables are)
    rows = sum(m.audio_emb[4 + k].weight[:CARD] for k in range(4)).detach().norm(dim=-1).mean()
    text = m.text_emb.weight[:VOCAB].detach().norm(dim=-1).mean()
    assert 0.5 < float(rows / text) < 2.0
