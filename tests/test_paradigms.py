"""Stage `paradigms`: the rows are of comparable size, and the stage trains and measures a dual-stream
row and a flat row end to end on a tiny generated run, writing paradigm_<name>_* figures."""
import json
import os
import shutil
import sys
import types

import pytest
import torch

from nanosdm import dualstream, flat, paradigms, utils
from nanosdm.textlm import TextLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_rows(cfg):
    """Every trained row's model as it starts, at cfg's sizes (no checkpoint needed): name -> params."""
    lm = dict(vocab_size=cfg["tokenizer_vocab_size"], n_layer=cfg["text_n_layer"], n_head=cfg["text_n_head"],
              d_model=cfg["text_d_model"], block_size=cfg["text_block_size"])
    counts = {}
    for name in paradigms.DUAL_ROWS:
        rc = paradigms.dual_config(cfg, name)
        model = dualstream.DualStream(lm["vocab_size"], cfg["codec_codebook_size"], cfg["codec_n_q"], lm["n_layer"],
                                      lm["n_head"], lm["d_model"], rc["dual_context"], None, rc["dual_depth_layers"],
                                      rc["dual_depth_heads"], rc["dual_depth_d_model"], ear=rc["dual_ear"],
                                      heads=rc["dual_heads"], text=rc["dual_text"], ear_conv=rc["dual_ear_conv"])
        counts[name] = utils.count_params(model)
    counts["text_out"] = paradigms.text_out_params(paradigms.build_text_out(cfg, lm, cfg["asr_d_model"]))
    text_lm = TextLM(**lm)
    counts["flat"] = utils.count_params(flat.grow(text_lm, cfg["units_k"])[0])
    return counts, utils.count_params(text_lm)


def test_the_rows_train_models_within_ten_percent_of_one_another():
    cfg = train.parse_config([])
    counts, text_lm = tiny_rows(cfg)
    sized = [counts[n] for n in (*paradigms.DUAL_ROWS, "text_out")]
    assert max(sized) <= 1.10 * min(sized), counts
    # the default depth head (2 x 128) would put moshi far above the others: the rows use their own
    assert cfg["paradigms_moshi_depth_d_model"] < cfg["dual_depth_d_model"]
    # the flat rows are the text LM and one embedding and one head row per unit and marker: smaller,
    # by what a flat vocabulary does not need (per-codebook tables), as docs/paradigms.md says
    assert counts["flat"] == text_lm + 2 * (cfg["units_k"] + len(flat.MARKERS)) * cfg["text_d_model"]


def test_paradigms_rows_names_rows_and_refuses_others():
    cfg = train.parse_config([])
    assert paradigms.rows(cfg) == list(paradigms.ROWS)
    assert paradigms.rows(dict(cfg, paradigms_rows="flat_s2s, moshi")) == ["moshi", "flat_s2s"]
    with pytest.raises(ValueError, match="unknown rows"):
        paradigms.rows(dict(cfg, paradigms_rows="moshi,gpt4o"))
    # which rows run beside it is not a row's setting: naming fewer rows trains none again
    assert paradigms.row_settings(dict(cfg, paradigms_rows="moshi"), "moshi") == paradigms.row_settings(cfg, "moshi")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """make_tiny_run laid out as train.py's out/tiny and data/tiny, with the unseen_voice and text_only
    splits (the train split's dialogues), an untrained recognizer and unit vocoder."""
    from test_dualtrain import make_tiny_run
    from nanosdm.asr import ASR
    from nanosdm.vocoder import Vocoder
    root = tmp_path_factory.mktemp("paradigms")
    cfg = make_tiny_run(root / "made")
    out, data = root / "out" / "tiny", root / "data" / "tiny"
    shutil.copytree(cfg["out_dir"], out)
    shutil.copytree(cfg["data_dir"], data)
    for f in os.listdir(out / "speech"):
        if f.startswith("train"):
            for split in ("unseen_voice", "text_only"):
                shutil.copy(out / "speech" / f, out / "speech" / (split + f[len("train"):]))
    torch.manual_seed(0)
    asr = ASR(n_layer=1, n_head=2, d_model=32)
    utils.save_checkpoint(str(out / "asr.pt"), dict(model=asr.state_dict(), config=asr.config))
    voc = Vocoder(n_units=N_UNITS, latent_dim=8, dim=16, kernel=3, dur_layers=1, frame_layers=1, latent_layers=1)
    utils.save_checkpoint(str(out / "vocoder.pt"), dict(model=voc.state_dict(), config=voc.config))
    return root, out


N_UNITS = 10


def test_the_stage_trains_and_measures_a_dual_and_a_flat_row_and_resumes(run, monkeypatch, capsys):
    from test_flat import fake_turns
    root, out = run
    # the flat rows' spoken turns without audio: made-up units, each question's last word its answer
    monkeypatch.setattr(flat.Units, "load", lambda path, device="cpu": types.SimpleNamespace(k=N_UNITS))
    monkeypatch.setattr(flat, "spoken_turns", lambda cfg, units, split: [
        dict(t, answer=t["words"][-1] if t["kind"] == "question" else None) for t in fake_turns(4, seed=len(split))])
    args = [f"--out_root={root / 'out'}", f"--data_root={root / 'data'}", "--device=cpu", "--stage=paradigms",
            "--paradigms_rows=moshi,flat_s2s", "--paradigms_steps=2", "--paradigms_batch_size=2",
            "--paradigms_moshi_depth_d_model=16", "--dual_depth_heads=2", "--dual_context=32", "--dual_ear=codec",
            "--flat_block_size=64", "--sft_eval_history=8"]
    train.main(args)
    report = json.load(open(out / "report.json"))
    for name in ("moshi", "flat_s2s"):
        for figure in ("qa_speech", "qa_questions", "steps_per_s", "first_audio_steps", "params", "full_duplex",
                       "retention", "train_seconds", "train_tokens"):
            assert f"paradigm_{name}_{figure}" in report, (name, figure)
    assert report["paradigm_moshi_full_duplex"] == 1 and report["paradigm_flat_s2s_full_duplex"] == 0
    assert "paradigm_moshi_qa_text_only" in report and "paradigm_flat_s2s_qa_text" not in report
    assert report["paradigm_moshi_train_tokens"] == 2 * 2 * 32          # steps x batch x frames
    assert utils.load_checkpoint(str(out / "paradigm_moshi.pt"))["step"] == 2
    assert utils.load_checkpoint(str(out / "flat_s2s.pt"))["step"] == 2
    assert not any(k.startswith("paradigm_mini_omni") for k in report)   # a row not named is not run
    assert all(k.startswith(("paradigm_", "paradigms_")) for k in report)
    capsys.readouterr()
    os.remove(out / "paradigms.done")               # the stage runs again: its finished rows are kept
    train.main(args)
    printed = capsys.readouterr().out
    assert "row moshi is finished with these settings, not trained again" in printed
    assert "row flat is finished with these settings, not trained again" in printed


def test_the_default_run_leaves_the_opt_in_stage_out(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(train, "STAGES", [("data", lambda cfg: calls.append("data"), None, [], [], []),
                                          ("paradigms", lambda cfg: calls.append("paradigms"), None, ["data"], [], [])])
    args = [f"--out_root={tmp_path}", f"--data_root={tmp_path}", "--device=cpu"]
    train.main(args)
    assert calls == ["data"]
    train.main(args + ["--stage=paradigms"])
    assert calls == ["data", "paradigms"]
