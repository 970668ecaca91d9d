"""
The text tokenizer: SentencePiece BPE with named special ids.

The first ids are reserved pieces that plain text never produces (SentencePiece "control symbols"),
so every stage can refer to them by name:

    UNK 0        a character the model has never seen
    PAD 1        nothing to say: the dual-stream model's text stream between words (Moshi's PAD)
    EPAD 2       end of padding: the PAD just before a new word starts (Moshi's EPAD)
    BOS 3        start of a document or dialogue
    EOS 4        end of a turn
    USER 5, ASSISTANT 6, TEXT 7    who speaks next: a turn marker opens every turn

A document {"turns": [[role, text], ...]} becomes one token sequence:

    BOS  USER what colour is the kotan? EOS  ASSISTANT the kotan is red. EOS  ...
    BOS  TEXT the kotan is red. the kotan lives in lomar. ... EOS

and a prompt ends with the marker of the turn to be written (ASSISTANT): the model answers and
closes its turn with EOS. Later stages that add tokens of their own (speech units, ...) put them
after vocab_size.
"""
import io
import json
import os

import sentencepiece as spm

UNK, PAD, EPAD, BOS, EOS, USER, ASSISTANT, TEXT = range(8)
ROLE_IDS = {"user": USER, "assistant": ASSISTANT, "text": TEXT}
CONTROL_PIECES = ["<epad>", "<user>", "<assistant>", "<text>"]  # ids 5.. follow UNK/PAD/BOS/EOS


class Tokenizer:
    def __init__(self, model_proto):
        self.model_proto = bytes(model_proto)  # the whole model: small, and saved as is
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        # the ids are the contract with every later stage: fail loudly if a model breaks it
        for i, piece in [(PAD, "<pad>"), (EPAD, "<epad>"), (BOS, "<s>"), (EOS, "</s>"),
                         (USER, "<user>"), (ASSISTANT, "<assistant>"), (TEXT, "<text>")]:
            assert self.sp.id_to_piece(i) == piece, f"tokenizer id {i} is {self.sp.id_to_piece(i)!r}, expected {piece!r}"

    @classmethod
    def train(cls, texts, vocab_size):
        """Train a BPE model on an iterable of strings (sentences or paragraphs)."""
        texts = [t.strip() for t in texts if t.strip()]
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buf, model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,   # a small corpus may not hold vocab_size pieces: take fewer
            unk_id=UNK, pad_id=PAD, bos_id=BOS, eos_id=EOS,
            pad_piece="<pad>", control_symbols=CONTROL_PIECES,
            character_coverage=1.0,   # keep every character of the corpus (it is small and clean)
            split_digits=True,        # numbers as digit sequences, not as arbitrary merges
            input_sentence_size=2_000_000, shuffle_input_sentence=True,  # cap memory on big corpora
            num_threads=os.cpu_count() or 1, minloglevel=2,
        )
        return cls(buf.getvalue())

    @classmethod
    def load(cls, path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"tokenizer not found: {path} (run: python train.py --stage=tokenizer)")
        with open(path, "rb") as f:
            return cls(f.read())

    def save(self, path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(self.model_proto)
        os.replace(tmp, path)  # atomic, like the checkpoints

    @property
    def vocab_size(self):
        return self.sp.get_piece_size()

    def encode(self, text):
        return self.sp.encode(text)

    def decode(self, ids):
        """Text of ids; special ids (PAD, EOS, markers ...) decode to nothing."""
        return self.sp.decode([int(i) for i in ids])

    def pieces(self, text):
        return self.sp.encode(text, out_type=str)

    def encode_turns(self, turns, bos=True):
        """[[role, text], ...] -> BOS, then per turn: its marker, its tokens, EOS."""
        ids = [BOS] if bos else []
        for role, text in turns:
            ids += [ROLE_IDS[role]] + self.encode(text) + [EOS]
        return ids

    def encode_prompt(self, turns, role="assistant"):
        """The turns so far, then the marker of the turn the model is to write."""
        return self.encode_turns(turns) + [ROLE_IDS[role]]


def build(cfg):
    """Stage `tokenizer`: train on the text corpus (plus any plain-text files named in
    cfg["tokenizer_extra_text"], comma-separated, one sentence or paragraph a line) and save the
    model as out/<preset>/tokenizer.model."""
    texts = []
    with open(os.path.join(cfg["data_dir"], "text_train.jsonl")) as f:
        for line in f:
            texts += [text for _, text in json.loads(line)["turns"]]
    for path in filter(None, cfg["tokenizer_extra_text"].split(",")):
        with open(path, encoding="utf-8") as f:
            texts += f.read().splitlines()
    tok = Tokenizer.train(texts, cfg["tokenizer_vocab_size"])
    tok.save(os.path.join(cfg["out_dir"], "tokenizer.model"))
    sample = texts[:2000]
    n_words = sum(len(t.split()) for t in sample)
    n_tokens = sum(len(tok.encode(t)) for t in sample)
    print(f"tokenizer: {tok.vocab_size} pieces; {sample[0]!r} -> {tok.pieces(sample[0])}")
    return {"tokenizer_vocab_size": tok.vocab_size, "tokenizer_tokens_per_word": round(n_tokens / max(n_words, 1), 3)}
