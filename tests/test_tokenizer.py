"""The SentencePiece tokenizer: round trip, named special ids, the turn format, save and load."""
import random

import pytest

from nanosdm import tokenizer as T


def fake_corpus(n=300, seed=0):
    rng = random.Random(seed)
    names = ["kotan", "lomar", "bixu", "zeppo", "chamil", "tarvo"]
    colours = ["red", "blue", "green", "golden"]
    out = []
    for _ in range(n):
        e, c = rng.choice(names), rng.choice(colours)
        out += [f"the {e} is {c}.", f"what colour is the {e}?", f"my name is ana, and i live in {rng.choice(names)}."]
    return out


@pytest.fixture(scope="module")
def tok():
    return T.Tokenizer.train(fake_corpus(), vocab_size=150)


def test_round_trip_and_special_ids(tok):
    assert (T.UNK, T.PAD, T.EPAD, T.BOS, T.EOS, T.USER, T.ASSISTANT, T.TEXT) == tuple(range(8))
    assert tok.sp.id_to_piece(T.EPAD) == "<epad>" and tok.sp.id_to_piece(T.ASSISTANT) == "<assistant>"
    assert 20 < tok.vocab_size <= 150
    for text in ["the kotan is red.", "what colour is the zeppo?", "my name is ana, and i live in lomar."]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert min(ids) >= 8, "plain text must never produce a reserved id"
    # special ids decode to nothing, so a reply cut anywhere decodes cleanly
    assert tok.decode([T.BOS, T.ASSISTANT] + tok.encode("the kotan is red.") + [T.EOS, T.PAD, T.EPAD]) == "the kotan is red."


def test_turn_format(tok):
    turns = [["user", "what colour is the kotan?"], ["assistant", "the kotan is red."]]
    ids = tok.encode_turns(turns)
    q, a = tok.encode(turns[0][1]), tok.encode(turns[1][1])
    assert ids == [T.BOS, T.USER] + q + [T.EOS, T.ASSISTANT] + a + [T.EOS]
    assert tok.encode_prompt(turns[:1]) == [T.BOS, T.USER] + q + [T.EOS, T.ASSISTANT]
    assert tok.encode_turns([["text", "the kotan is red."]], bos=False) == [T.TEXT] + a + [T.EOS]


def test_save_and_load(tok, tmp_path):
    path = tmp_path / "sub" / "tokenizer.model"
    tok.save(str(path))
    again = T.Tokenizer.load(str(path))
    assert again.vocab_size == tok.vocab_size
    assert again.encode("the tarvo is golden.") == tok.encode("the tarvo is golden.")
    with pytest.raises(FileNotFoundError, match="--stage=tokenizer"):
        T.Tokenizer.load(str(tmp_path / "missing.model"))
