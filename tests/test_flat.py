"""The flat paradigms: each format round-trips, the grown LM keeps the text LM, cached generation
equals the full pass, and the training loop learns, saves and resumes."""
import random
import types

import pytest
import torch

from nanosdm import flat, utils
from nanosdm.textlm import TextLM
from nanosdm.tokenizer import ASSISTANT, BOS, EOS, USER, Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py

N_UNITS = 10
WORDS = "the kotan is red blue lives in lomar what colour tell me my name rosa nice to meet you".split()
LM = dict(n_layer=1, n_head=2, d_model=16, block_size=96, dropout=0.0)


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    return Tokenizer.train([" ".join(rng.choices(WORDS, k=8)) + rng.choice(".?,") for _ in range(300)], vocab_size=80)


@pytest.fixture(scope="module")
def v(tok):
    return flat.Vocab(tok.vocab_size, N_UNITS)


def fake_turn(rng, speaker, kind, dialogue="d0", interrupted=False):
    words = rng.choices(WORDS, k=rng.randint(2, 5))
    word_units = [[rng.randrange(N_UNITS) for _ in range(rng.randint(1, 4))] for _ in words]
    return dict(dialogue=dialogue, speaker=speaker, kind=kind, text=" ".join(words) + ".", interrupted=interrupted,
                words=words, units=[u for w in word_units for u in w] + [0], word_units=word_units)


def fake_turns(n_exchanges=6, seed=0):
    rng = random.Random(seed)
    turns = []
    for i in range(n_exchanges):
        turns += [fake_turn(rng, "user", "question"), fake_turn(rng, "assistant", "answer", interrupted=i == 2)]
    return turns


def test_the_joint_vocabulary_puts_units_then_markers_after_the_text(v, tok):
    n = tok.vocab_size
    assert v.units([0, 9]) == [n, n + 9]
    assert (v.speech, v.text, v.answer, v.size) == (n + 10, n + 11, n + 12, n + 13)
    assert v.is_unit(n) and v.is_unit(n + 9) and not v.is_unit(n + 10) and not v.is_unit(n - 1)
    assert all(v.is_marker(i) for i in (BOS, EOS, USER, ASSISTANT, v.speech, v.text, v.answer))
    assert not v.is_marker(n) and not v.is_marker(tok.encode("kotan")[0])


def test_chain_of_modality_round_trips(v, tok):
    q_units, a_units = [3, 1, 4, 1, 5], [9, 2, 6]
    transcript, answer = tok.encode("what colour is the kotan?"), tok.encode("the kotan is red.")
    ids, n_prompt = flat.dialogue(v, q_units, flat.chain_reply(v, transcript, answer, a_units))
    assert ids[:n_prompt] == flat.dialogue_prompt(v, q_units) and ids[n_prompt - 1] == ASSISTANT
    assert ids[n_prompt] == v.text and ids[-1] == EOS and ids.count(v.speech) == 2
    got = flat.parse_dialogue(v, ids)
    assert got == dict(question_units=q_units, transcript=transcript, answer=answer, answer_units=a_units)
    assert tok.decode(got["transcript"]) == "what colour is the kotan?"
    shown = flat.show(v, tok, ids)
    assert shown.startswith("BOS USER [SPEECH] u3 u1 u4 u1 u5 EOS ASSISTANT [TEXT] 'what colour is the kotan?' [ANSWER]")
    assert shown.endswith("[SPEECH] u9 u2 u6 EOS")


def test_speech_dialogue_round_trips_with_and_without_the_answer_words(v, tok):
    q_units = [0, 7, 7, 2]
    ids, n_prompt = flat.dialogue(v, q_units, flat.speech_reply(v, [1, 2, 3]))
    assert ids[n_prompt:] == [v.speech] + v.units([1, 2, 3]) + [EOS]
    assert flat.parse_dialogue(v, ids) == dict(question_units=q_units, transcript=[], answer=[], answer_units=[1, 2, 3])
    words, word_units = ["nice", "to", "meet", "you"], [[1, 2], [3], [4, 5, 6], [7]]
    ids, n_prompt = flat.dialogue(v, q_units, flat.words_reply(v, [tok.encode(w) for w in words], word_units))
    assert ids[n_prompt:].count(v.answer) == 4 and ids[n_prompt:].count(v.speech) == 4
    got = flat.parse_dialogue(v, ids)
    assert got["question_units"] == q_units and got["transcript"] == []
    assert tok.decode(got["answer"]) == "nice to meet you" and got["answer_units"] == [1, 2, 3, 4, 5, 6, 7]


def test_interleaving_marks_only_the_switches_and_round_trips(v, tok):
    rng = random.Random(1)
    words = "the kotan lives in lomar tell me my name".split()
    word_units = [[i, (i + 1) % N_UNITS] for i in range(len(words))]
    n_runs = []
    for _ in range(20):
        ids = flat.interleaved(v, [tok.encode(w) for w in words], word_units, rng)
        runs = flat.parse_interleaved(v, ids)
        assert ids[0] == BOS and ids[-1] == EOS and ids[1] in (v.speech, v.text)
        assert all(a[0] != b[0] for a, b in zip(runs, runs[1:]))       # a marker only where the modality changes
        i = 0
        for kind, payload in runs:                                     # every word once, in order, in its modality
            if kind == "text":
                n = len(tok.decode(payload).split())
                assert tok.decode(payload) == " ".join(words[i:i + n])
            else:
                n, got = 0, []
                while len(got) < len(payload):
                    got += word_units[i + n]
                    n += 1
                assert got == payload
            i += n
        assert i == len(words)
        n_runs.append(len(runs))
    assert min(n_runs) >= 1 and max(n_runs) >= 3                      # the switches do happen
    assert flat.parse_interleaved(v, flat.speech_only(v, [5, 6, 5])) == [("speech", [5, 6, 5])]


def test_word_units_cut_the_frames_at_the_timings():
    frames = torch.tensor([1, 1, 2, 2, 2, 3, 3, 4, 5, 5])             # 20 ms each
    words = [["a", 0.001, 0.061], ["b", 0.061, 0.139], ["c", 0.181, 0.185], ["d", 0.5, 0.6]]
    # a: frames 0-2 [1 1 2]; b: 3-5 [2 2 3]; c: frame 9 at least; d: past the end -> the last frame
    assert flat.word_units(frames, words) == [[1, 2], [2, 3], [5], [5]]


def test_exchanges_and_every_format_built_from_turns(v, tok):
    turns = fake_turns()
    pairs = flat.exchanges(turns)
    assert len(pairs) == 5 and all(not a["interrupted"] for _, a in pairs)     # exchange 2's answer was cut off
    (chain,), (speech,), (words,) = (flat.build_examples(f, v, tok, turns) for f in ("chain", "speech", "speech_words"))
    for (q, a), c, s, w in zip(pairs, chain, speech, words):
        got = flat.parse_dialogue(v, c[0])
        assert tok.decode(got["transcript"]) == q["text"] and tok.decode(got["answer"]) == a["text"]
        assert got["question_units"] == q["units"] and got["answer_units"] == a["units"]
        assert flat.parse_dialogue(v, s[0])["answer_units"] == a["units"]
        got = flat.parse_dialogue(v, w[0])
        assert tok.decode(got["answer"]) == " ".join(a["words"])
        assert got["answer_units"] == [u for word in a["word_units"] for u in word]
        assert c[1] == s[1] == w[1] == len(flat.dialogue_prompt(v, q["units"]))
    docs = [[["text", "the kotan is red."]], [["user", "tell me my name."], ["assistant", "rosa."]]]
    inter, speech_only, text = flat.build_examples("pretrain", v, tok, turns, docs, draws=2)
    assert len(inter) == 2 * len(turns) and len(speech_only) == len(turns)
    assert text == [(tok.encode_turns(d), 0) for d in docs]


def test_batches_score_the_reply_only_and_skip_the_padding():
    a, b = ([10, 11, 12, 13, 14], 3), ([20, 21, 22], 0)
    x, y = flat.get_batch([[a, b]], 8, torch.Generator().manual_seed(0), "cpu")
    I = flat.IGNORE
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        if row_x[0] == 10:
            assert row_x == [10, 11, 12, 13] and row_y == [I, I, 13, 14]   # the prompt is 10 11 12
        else:
            assert row_x[:2] == [20, 21] and row_y == [21, 22, I, I]


@pytest.fixture(scope="module")
def text_lm(tok):
    torch.manual_seed(0)
    return TextLM(tok.vocab_size, **LM).eval()


@pytest.mark.parametrize("init", ["mean", "normal"])
def test_the_grown_lm_keeps_the_text_lms_logits(text_lm, tok, init):
    model, v = flat.grow(text_lm, N_UNITS, block_size=128, init=init)
    model.eval()
    idx = torch.tensor([tok.encode_turns([["user", "what colour is the kotan?"], ["assistant", "red."]])])
    assert v.size == tok.vocab_size + N_UNITS + len(flat.MARKERS) and model.config["block_size"] == 128
    with torch.no_grad():
        old, new = text_lm(idx), model(idx)
    assert new.shape[-1] == v.size
    assert torch.allclose(new[..., :v.n_text], old, atol=1e-5)
    assert torch.equal(model.embed.weight[:v.n_text], text_lm.embed.weight)
    added = model.embed.weight[v.n_text:]
    if init == "mean":     # near the text rows' mean, yet no two alike
        assert torch.allclose(added.mean(0), text_lm.embed.weight.mean(0), atol=0.1 * text_lm.embed.weight.std(0).max().item())
    assert torch.cdist(added, added).add(torch.eye(len(added))).min() > 1e-4


def test_parameters_grow_by_two_rows_per_new_id(text_lm):
    model, v = flat.grow(text_lm, N_UNITS)
    d = LM["d_model"]
    assert flat.count_params(model) == flat.count_params(text_lm) + 2 * (N_UNITS + len(flat.MARKERS)) * d
    assert flat.count_params(text_lm) == sum(p.numel() for p in text_lm.parameters())


def test_kv_cache_one_step_at_a_time_equals_the_full_pass(text_lm):
    model, v = flat.grow(text_lm, N_UNITS, init="normal", seed=3)
    model.eval()
    prompt = flat.dialogue_prompt(v, [1, 2, 3, 4])
    for start, speech in ((prompt, False), (prompt + [v.speech], True)):
        new, seen = flat.generate(model, v, start, 20, temperature=0, constrain=True)
        with torch.no_grad():
            full = model(torch.tensor([start + new[:-1]]))[0, len(start) - 1:]
        assert len(new) == len(seen) == full.shape[0]
        assert torch.allclose(seen, full, atol=1e-4)
        # the constraint: a unit never inside text, only units (or a way out) inside speech
        masks = flat.modality_masks(v)
        in_speech = speech
        for i, t in enumerate(new):
            assert masks[int(in_speech), t]
            assert t == int(full[i].masked_fill(~masks[int(in_speech)], float("-inf")).argmax())
            in_speech = t == v.speech if v.is_marker(t) else in_speech
        assert len(new) == 20 and (v.is_unit(new[0]) if speech else not v.is_unit(new[0]))
    reply = flat.respond(model, v, [1, 2, 3, 4], start=[v.speech], max_new_tokens=6)
    assert reply["reply"][0] == v.speech and reply["question_units"] == [1, 2, 3, 4]
    assert reply["answer_units"] == [t - v.n_text for t in reply["reply"][1:] if v.is_unit(t)] != []


@pytest.fixture
def cfg(tmp_path, text_lm, tok, monkeypatch):
    """A tiny run: the text LM and tokenizer on disk, fake turns in place of the corpus's audio."""
    tok.save(str(tmp_path / "tokenizer.model"))
    utils.save_checkpoint(str(tmp_path / "text.pt"), dict(model=text_lm.state_dict(), config=text_lm.config))
    monkeypatch.setattr(flat.Units, "load", lambda path, device="cpu": types.SimpleNamespace(k=N_UNITS))
    monkeypatch.setattr(flat, "spoken_turns", lambda cfg, units, split: fake_turns(8, seed=split == "val"))
    return dict(device="cpu", out_dir=str(tmp_path), data_dir=str(tmp_path), seed=0, flat_block_size=96,
                flat_init="mean", flat_batch_size=8, flat_max_steps=40, flat_lr=3e-3, flat_embed_lr_mult=10.0,
                flat_warmup=5, flat_weight_decay=0.0, flat_grad_clip=1.0, flat_eval_interval=20,
                flat_eval_batches=2, flat_ckpt_interval=10)


def test_training_learns_the_format_and_resumes(cfg, tmp_path, capsys):
    m = flat.train(cfg, "chain", stop_step=20)
    assert m == {} and torch.load(tmp_path / "flat_chain.pt", weights_only=True)["step"] == 20
    m = flat.train(cfg, "chain")
    assert "resuming from" in capsys.readouterr().out
    history = torch.load(tmp_path / "flat_chain.pt", weights_only=True)["history"]["train"]
    assert [s for s, _ in history] == list(range(1, 41))
    assert m["flat_chain_train_loss"] < 0.7 * history[0][1]
    model, v = flat.load_model(str(tmp_path / "flat_chain.pt"))
    assert v.n_units == N_UNITS and m["flat_chain_params"] == flat.count_params(model)
    assert flat.train(cfg, "chain") == m                                 # finished: kept, not trained again
    assert "not trained again" in capsys.readouterr().out


def test_the_flat_rows_train_at_one_budget(cfg, tmp_path):
    from nanosdm.corpus.spokenworld import write_jsonl
    for split in ("train", "val"):
        write_jsonl(str(tmp_path / f"text_{split}.jsonl"), [dict(turns=[["text", "the kotan is red."]])] * 4)
    cfg.update(flat_max_steps=6, flat_pretrain_frac=0.5, flat_eval_interval=3)
    m = flat.train_rows(cfg)
    steps = {n: torch.load(tmp_path / f"{n}.pt", weights_only=True)["step"]
             for n in ("flat_chain", "flat_pretrain", "flat_spirit", "flat_spirit_words", "flat_s2s")}
    assert steps == dict(flat_chain=6, flat_pretrain=3, flat_spirit=3, flat_spirit_words=3, flat_s2s=6)
    params = {m[f"{n}_params"] for n in ("flat_chain", "flat_spirit", "flat_spirit_words", "flat_s2s")}
    assert len(params) == 1                                              # one model size for every flat row
    assert all(m[f"{n}_target_tokens"] > 0 for n in steps)
