"""The paradigm table's row figures on tiny generated fixtures: the keys, the figures the format fixes
(steps per second, first audio, parameters), and the QA figures where a row writes text or speaks."""
import os
import shutil
import types

import pytest
import torch

from nanosdm import dualstream, dualtrain, flat, utils
from nanosdm.asr import ASR
from nanosdm.eval import paradigms

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """make_tiny_run's out/ with an unseen_voice split (the train split's dialogues) and an untrained
    recognizer as asr.pt: enough for every figure to be computed, none to be good."""
    from test_dualtrain import make_tiny_run
    cfg = make_tiny_run(tmp_path_factory.mktemp("run"))
    speech = os.path.join(cfg["out_dir"], "speech")
    for f in os.listdir(speech):
        if f.startswith("train"):
            shutil.copy(os.path.join(speech, f), os.path.join(speech, "unseen_voice" + f[len("train"):]))
    torch.manual_seed(0)
    asr = ASR(n_layer=1, n_head=2, d_model=32)
    utils.save_checkpoint(os.path.join(cfg["out_dir"], "asr.pt"), dict(model=asr.state_dict(), config=asr.config))
    return dict(cfg, sft_eval_history=8)


@pytest.mark.parametrize("name,variant,parallel_decoding", [
    ("moshi", dict(), False), ("miniomni", dict(dual_heads="parallel"), True), ("s2s", dict(dual_text=False), False)])
def test_a_dual_stream_rows_figures(run, tmp_path, name, variant, parallel_decoding):
    cfg = dict(run, out_dir=str(tmp_path / "out"), **variant)
    shutil.copytree(run["out_dir"], cfg["out_dir"])
    dualtrain.train(cfg, "align")
    path = os.path.join(cfg["out_dir"], "align.pt")
    model = dualstream.load_model(path)
    figures = paradigms.evaluate_dual_row(cfg, name, path, parallel_decoding)
    key = lambda f: f"paradigm_{name}_{f}"
    D = max(model.delays)
    assert D == (2 if name == "miniomni" else 1)            # 2 codebooks: Mini-Omni's delays 1, 2
    assert figures[key("qa_questions")] == 3 and figures[key("params")] == utils.count_params(model)
    assert figures[key("steps_per_s")] == 12.5 and figures[key("first_audio_ms")] == 80 * (1 + D)
    assert figures[key("first_audio_steps")] == 1 + D and figures[key("batch_per_reply")] == 1 + parallel_decoding
    assert (key("qa_text") in figures) == model.text      # a row without text has no text figure
    shares = (0.0, 0.3333, 0.6667, 1.0)                      # of the 3 questions
    assert figures[key("qa_speech")] in shares and figures.get(key("qa_text"), 0.0) in shares
    # a row with text is taken apart as stage sft is: ear, brain, voice (none for speech to speech)
    parts = ("ear_name_acc", "qa_text_heard", "qa_text_heard_facts", "voice_acc", "judge_acc_window")
    assert all((key(p) in figures) == model.text for p in parts)
    assert all(figures[key(p)] in shares for p in parts if model.text)
    # first audio in the live loop: never before the delays let the frame after the question's end out
    silent, ms = figures[key("first_audio_silent")], figures[key("first_audio_measured_ms")]
    assert silent in shares and (ms == -1) == (silent == 1.0)
    assert ms == -1 or ms >= 80 * D


def test_first_voiced_finds_the_first_loud_window():
    wav = torch.zeros(16000)
    assert paradigms.first_voiced(wav) is None
    wav[3 * 320 + 10:3 * 320 + 300] = 0.5          # most of the fourth 20 ms window
    assert paradigms.first_voiced(wav) == 3 * 320
    assert paradigms.first_voiced(wav, 4 * 320) is None and paradigms.first_voiced(wav, 320) == 3 * 320


def test_taken_apart_finds_nothing_lost_in_the_recording_itself(run):
    """The plumbing of eval/dialogue.taken_apart, model-free: a 'model' that writes and says what the
    recording holds hears every name, answers every question, and its voice scores the judge's ceiling."""
    import numpy as np
    from nanosdm.codec import Codec, FRAME_S
    from nanosdm.corpus.speech import Streams
    from nanosdm.eval.dialogue import recorded_window, taken_apart
    from nanosdm.live import ANSWER_WINDOW_S, qa_batch, questions, silence_codes
    from nanosdm.tokenizer import PAD, Tokenizer
    out = run["out_dir"]
    codec, tok, asr = Codec.load(os.path.join(out, "codec.pt")), Tokenizer.load(os.path.join(out, "tokenizer.model")), ASR.load(os.path.join(out, "asr.pt"))
    streams = Streams(os.path.join(out, "speech"), "unseen_voice")
    items = questions(streams)
    quiet = silence_codes(codec)
    hist, user, starts, ends = qa_batch(streams, items, 8, quiet, np.concatenate([[PAD], quiet.numpy(), quiet.numpy()]))
    q_frames = [e - s for s, e in zip(starts, ends)]
    window = [q + int(ANSWER_WINDOW_S / FRAME_S) for q in q_frames]
    rec_text, rec_codes = recorded_window(streams, items, starts, user.shape[1], quiet)
    calls = []

    def recording(h, u, force=None):     # writes what it is told, else what the recording holds
        calls.append(force)
        return (rec_text if force is None else torch.where(force >= 0, force, rec_text)), rec_codes

    parts = taken_apart(recording, rec_text, codec, asr, tok, streams, items, (hist, user, starts, q_frames, window),
                        quiet, {"kotan"}, 0)
    assert parts["ear_name_acc"] == 1.0 and parts["qa_text_heard"] == parts["qa_text_heard_facts"] == 1.0
    assert parts["voice_acc"] == parts["judge_acc_window"]
    assert len(calls) == 2 and (calls[0] == -1).any() and (calls[1] >= 0).all()   # the question forced, then everything
    # a transcript that names another creature is not heard
    wrong = torch.where(rec_text == tok.encode("kotan")[0], tok.encode("lomar")[0], rec_text)
    assert taken_apart(recording, wrong, codec, asr, tok, streams, items, (hist, user, starts, q_frames, window),
                       quiet, {"kotan"}, 0)["ear_name_acc"] == 0.0


def test_a_flat_rows_figures(run):
    from nanosdm.tokenizer import Tokenizer
    tok = Tokenizer.load(os.path.join(run["out_dir"], "tokenizer.model"))
    torch.manual_seed(0)
    model, v = flat.start_model(os.path.join(run["out_dir"], "text.pt"), 12, 64, "mean", 0)
    model.eval()
    # an untrained model closes its reply at once: a head that prefers units (a bias) speaks until
    # max_new_tokens ends the reply
    head = torch.nn.Linear(model.head.in_features, model.head.out_features)
    with torch.no_grad():
        head.weight.copy_(model.head.weight)
        head.bias.zero_()
        head.bias[v.n_text:v.n_text + v.n_units] = 10.0
    model.head = head
    items = [dict(question_units=[3, 1, 4, 1, 5, 9], question="what colour is the kotan?", answer="red"),
             dict(question_units=[2, 7, 1, 8], question="what colour is the kotan?", answer="blue")]
    speak = lambda units: torch.zeros(len(units) * 320)     # 20 ms of (silent) voice per unit
    asr = ASR.load(os.path.join(run["out_dir"], "asr.pt"))
    figures = paradigms.flat_row("speech", model, v, tok, items, speak, asr, start=[v.speech], max_new_tokens=20)
    replies = [flat.respond(model, v, it["question_units"], start=[v.speech], max_new_tokens=20) for it in items]
    n_units = sum(len(r["answer_units"]) for r in replies)
    assert n_units > 0                                       # the constraint keeps a speech span in units
    key = lambda f: f"paradigm_speech_{f}"
    assert figures[key("steps_per_s")] == round(sum(len(r["reply"]) for r in replies) / (n_units * 0.02), 2)
    assert figures[key("first_audio_steps")] == 2            # [SPEECH] then its first unit
    assert figures[key("params")] == utils.count_params(model) and figures[key("qa_questions")] == 2
    assert figures[key("qa_speech")] == 0.0                  # silence says nothing
    assert key("qa_text") not in figures                     # the speech row writes no answer text
    # first audio, measured: a vocoder that voices each unit at once answers in the LM's time alone;
    # one that stays quiet never answers
    loud = types.SimpleNamespace(new_state=lambda codec: {}, stream=lambda u, st, codec: (torch.full((320,), 0.5), st))
    quiet = types.SimpleNamespace(new_state=lambda codec: {}, stream=lambda u, st, codec: (torch.zeros(320), st))
    timed = paradigms.flat_first_audio("speech", model, v, loud, None, items, [v.speech])
    assert timed[key("first_audio_silent")] == 0.0 and 0 <= timed[key("first_audio_measured_ms")] < 5000
    timed = paradigms.flat_first_audio("speech", model, v, quiet, None, items, [v.speech])
    assert timed == {key("first_audio_measured_ms"): -1, key("first_audio_silent"): 1.0}


def test_the_chain_of_modality_is_taken_apart(run, monkeypatch):
    """chain_taken_apart asks the chain three things: its transcript (ear), its answer with the
    question's words written for it (brain), its units with the reply's words written for it (voice)."""
    from nanosdm.tokenizer import Tokenizer
    tok = Tokenizer.load(os.path.join(run["out_dir"], "tokenizer.model"))
    v = flat.Vocab(tok.vocab_size, 12)
    items = [dict(question_units=[1, 2], question="what colour is the kotan?", answer="red", reply="the kotan is red."),
             dict(question_units=[3, 4], question="what colour is the lomar?", answer="blue", reply=None)]
    asked = []

    def respond(model, v_, question_units, start=(), max_new_tokens=300):   # hears "kotan" for every creature
        asked.append(list(start))
        if v.answer not in start:
            return dict(transcript=tok.encode("what colour is the kotan?"), answer=[], answer_units=[])
        return dict(transcript=[], answer=tok.encode("the kotan is red."), answer_units=[1, 2, 3] * (v.speech in start))

    monkeypatch.setattr(flat, "respond", respond)
    said = []
    figures = paradigms.chain_taken_apart("chain", None, v, tok, items, lambda u: said.append(u) or torch.zeros(3200),
                                          ASR.load(os.path.join(run["out_dir"], "asr.pt")), {"kotan", "lomar"})
    assert figures["paradigm_chain_ear_name_acc"] == 0.5          # kotan heard, lomar not
    assert figures["paradigm_chain_qa_text_heard"] == 0.5         # "red" right for the kotan only
    assert figures["paradigm_chain_voice_acc"] == 0.0 and said == [[1, 2, 3]]   # silence: one reply to voice
    assert [v.text] + tok.encode(items[0]["question"]) + [v.answer] in asked
    assert [v.text] + tok.encode(items[0]["question"]) + [v.answer] + tok.encode(items[0]["reply"]) + [v.speech] in asked


def test_the_vocoder_ceiling_judges_the_corpus_own_replies_only(monkeypatch):
    """The flat rows' ceiling voices each recorded reply's units and judges it against its question's
    answer; questions whose reply was interrupted (no reply units) are left out."""
    judged = []

    def judge_wavs(judge, wavs, questions, answers):   # a judge that hears every loud clip right
        judged.append(list(answers))
        return [bool(w.abs().max() > 0.1) for w in wavs], None

    monkeypatch.setattr(paradigms, "judge_wavs", judge_wavs)
    items = [dict(question="what colour is the kotan?", answer="red", reply_units=[1, 2]),
             dict(question="what colour is the lomar?", answer="blue", reply_units=[3]),
             dict(question="who owns the sifa?", answer="ana", reply_units=None)]
    speak = lambda units: torch.full((320 * len(units),), 0.5 if units[0] < 3 else 0.0)   # unit 3: a silent mouth
    assert paradigms.vocoder_ceiling(items, speak, None) == 0.5
    assert judged == [["red", "blue"]]
