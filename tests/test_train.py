"""train.py's configuration and stage runner."""
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402


def test_presets_name_only_known_keys_of_the_right_type():
    defaults = train.parse_config([])
    for name, preset in train.presets.items():
        for key, value in preset.items():            # a typo or a wrong type in a preset fails here, not at run time
            assert key in defaults, (name, key)
            assert type(value) is type(defaults[key]) or (type(defaults[key]) is float and type(value) is int), (name, key)
    small = train.parse_config(["--preset=small"])
    assert small["codec_n_q"] == train.presets["small"]["codec_n_q"] != defaults["codec_n_q"]
    # an explicit override beats the preset, and is converted to the default's type
    cfg = train.parse_config(["--preset=small", "--data_entities=33", "--data_text_only_frac=0.5", "--align_freeze=true"])
    assert cfg["data_entities"] == 33 and cfg["data_text_only_frac"] == 0.5 and cfg["align_freeze"] is True
    assert cfg["codec_n_q"] == small["codec_n_q"]


@pytest.mark.parametrize("args,message", [
    (["--no_such_key=1"], "unknown config key --no_such_key"),
    (["--data_entities=lots"], "expected a int"),
    (["--preset=huge"], "unknown preset"),
    (["data_entities=3"], "expected --key=value"),
])
def test_bad_arguments_are_named(args, message):
    with pytest.raises(SystemExit, match=message):
        train.parse_config(args)


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    """Two stages named like real ones (so their settings are data_* and tokenizer_*): `data` builds a
    file, `tokenizer` reads it, trains (a file) and is evaluated; every call is recorded."""
    calls = []
    out = tmp_path / "tiny"

    def build_data(cfg):
        calls.append("build data")
        (out / "data.txt").write_text(str(cfg["data_entities"]))
        return {"data_n": cfg["data_entities"]}

    def train_tok(cfg):
        calls.append("train tokenizer")
        assert not (out / "tok.pt").exists() or "--retrain" not in calls   # --retrain deleted it first
        (out / "tok.pt").write_text((out / "data.txt").read_text())
        return {"tokenizer_loss": 1.0}

    def eval_tok(cfg):
        calls.append("eval tokenizer")
        return {"tokenizer_acc": int((out / "tok.pt").read_text()) / 1000}

    monkeypatch.setattr(train, "STAGES", [("data", build_data, None, [], [], []),
                                          ("tokenizer", train_tok, eval_tok, ["data"], [], ["tok.pt"])])
    args = [f"--out_root={tmp_path}", f"--data_root={tmp_path}", "--device=cpu"]
    report = lambda: json.load(open(out / "report.json"))
    return calls, args, report, out


def test_stage_runner_runs_once_then_skips(fake_stages, capsys):
    calls, args, report, out = fake_stages
    train.main(args)
    assert calls == ["build data", "train tokenizer", "eval tokenizer"]
    r = report()
    assert r["data_n"] == train.data_entities and r["tokenizer_acc"] == train.data_entities / 1000
    assert "tokenizer_seconds" in r and "tokenizer_eval_seconds" in r
    marker = json.load(open(out / "tokenizer.done"))
    assert marker["settings"]["tokenizer_vocab_size"] == train.tokenizer_vocab_size and "data_entities" not in marker["settings"]
    assert marker["reads"]["data"] == json.load(open(out / "data.done"))["stamp"]
    train.main(args)                                   # all up to date: nothing runs again
    assert len(calls) == 3 and "up to date, skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown stage"):
        train.main(args + ["--stage=nope"])


def test_a_finished_stage_asked_by_name_is_evaluated_not_retrained(fake_stages, capsys):
    calls, args, report, out = fake_stages
    train.main(args)
    (out / "tok.pt").write_text("7")                   # the checkpoint changed under it: evaluation sees it
    del calls[:]
    train.main(args + ["--stage=tokenizer"])
    assert calls == ["eval tokenizer"] and report()["tokenizer_acc"] == 0.007
    train.main(args + ["--stage=data"])                # a build with nothing to evaluate: left as it is
    assert calls == ["eval tokenizer"] and "[tokenizer] out of date" not in capsys.readouterr().out
    train.main(args)
    assert calls == ["eval tokenizer"]
    assert report()["tokenizer_loss"] == 1.0           # the training figures are kept
    calls.append("--retrain")
    train.main(args + ["--stage=tokenizer", "--retrain"])
    assert calls[1:] == ["--retrain", "train tokenizer", "eval tokenizer"]
    with pytest.raises(SystemExit, match="--retrain goes with one stage"):
        train.main(args + ["--retrain"])


def test_changed_settings_rerun_the_stage_and_the_ones_after_it(fake_stages, capsys):
    calls, args, report, out = fake_stages
    train.main(args)
    del calls[:]
    train.main(args + ["--tokenizer_vocab_size=77"])   # the tokenizer's own setting: it alone reruns
    assert calls == ["train tokenizer", "eval tokenizer"]
    assert "its settings changed: tokenizer_vocab_size=1024 -> 77" in capsys.readouterr().out
    del calls[:]
    # data rebuilt by name: the tokenizer's figures came from the old data, so they leave report.json
    train.main(args + ["--tokenizer_vocab_size=77", "--stage=data", "--data_entities=50"])
    assert calls == ["build data"]
    assert report()["data_n"] == 50 and "tokenizer_acc" not in report() and "tokenizer_loss" not in report()
    assert "[tokenizer] out of date (its input 'data' was rebuilt)" in capsys.readouterr().out
    train.main(args + ["--tokenizer_vocab_size=77", "--data_entities=50"])   # the whole run catches up
    assert calls == ["build data", "train tokenizer", "eval tokenizer"] and report()["tokenizer_acc"] == 0.05


def test_a_marker_without_its_settings_runs_the_stage_again(fake_stages):
    calls, args, report, out = fake_stages
    train.main(args)
    for name in ("data", "tokenizer"):                 # an older runner's format: the figures alone
        (out / f"{name}.done").write_text(json.dumps({f"{name}_old": 1}))
    del calls[:]
    train.main(args)                                   # nothing is known of how they were made: rebuilt
    assert calls == ["build data", "train tokenizer", "eval tokenizer"]
    assert "settings" in json.loads((out / "tokenizer.done").read_text())


@pytest.fixture
def fake_codec_asr(tmp_path, monkeypatch):
    """Two stages named like the real ones, so the real EVAL_ONLY table applies (codec_eval_clips,
    asr_beam): `asr` reads `codec`; each trains (recording the settings it is handed) and is evaluated."""
    calls = []

    def stage(name):
        def build(cfg):
            calls.append(f"train {name}")
            calls.append(cfg["train_settings"])
            return {f"{name}_loss": 1.0}

        def evaluate(cfg):
            calls.append(f"eval {name}")
            return {f"{name}_score": 0.5}
        return build, evaluate

    monkeypatch.setattr(train, "STAGES", [("codec", *stage("codec"), [], [], []),
                                          ("asr", *stage("asr"), ["codec"], ["speech_data"], [])])
    args = [f"--out_root={tmp_path}", f"--data_root={tmp_path}", "--device=cpu"]
    return calls, args


def test_an_evaluation_only_setting_evaluates_again_without_training(fake_codec_asr, capsys):
    calls, args = fake_codec_asr
    train.main(args)
    assert [c for c in calls if isinstance(c, str)] == ["train codec", "eval codec", "train asr", "eval asr"]
    # the training loops are handed the settings they depend on: no evaluation-only ones, the extra ones kept
    codec_settings, asr_settings = [c for c in calls if isinstance(c, dict)]
    assert "codec_eval_clips" not in codec_settings and "codec_lr" in codec_settings
    assert "asr_beam" not in asr_settings and asr_settings["speech_data"] == "spokenworld"
    del calls[:]
    train.main(args + ["--asr_beam=4"])                 # asr's checkpoint is kept: evaluated again only
    assert calls == ["eval asr"]
    assert "[asr] its evaluation settings changed: asr_beam=8 -> 4: evaluating it" in capsys.readouterr().out
    train.main(args + ["--asr_beam=4"])                 # recorded: nothing to do
    assert calls == ["eval asr"]
    del calls[:]
    # codec evaluated again; asr, which reads codec's checkpoint (not its figures), stays current
    train.main(args + ["--asr_beam=4", "--codec_eval_clips=5"])
    assert calls == ["eval codec"]
    del calls[:]
    train.main(args + ["--asr_beam=4", "--codec_eval_clips=5", "--codec_lr=0.001"])   # a training setting: both again
    assert [c for c in calls if isinstance(c, str)] == ["train codec", "eval codec", "train asr", "eval asr"]


def test_eval_only_settings_are_known_keys_and_sft_eval_history_still_shapes_dpo():
    from nanosdm import runner
    cfg = train.parse_config([])
    plan = dict(stages=train.STAGES, eval_only=train.EVAL_ONLY, global_keys=train.GLOBAL_KEYS)
    for name, keys in train.EVAL_ONLY.items():
        assert name in [s[0] for s in train.STAGES] and all(k in cfg for k in keys), name
        assert not set(keys) & set(runner.training_settings(cfg, plan, name)), name
    # sft evaluates with it; dpo collects its pairs with it, so it trains dpo again
    assert "sft_eval_history" in train.EVAL_ONLY["sft"] and "sft_eval_history" in runner.training_settings(cfg, plan, "dpo")


@pytest.mark.parametrize("args", [["--dual_ear_init=centroids"], ["--dual_ear_init=units", "--dual_ear=codec"]])
def test_an_ear_init_without_units_is_refused_before_any_stage(args, tmp_path):
    with pytest.raises(SystemExit, match="--dual_ear_init="):
        train.main(args + [f"--out_root={tmp_path}", f"--data_root={tmp_path}"])
    assert [f for f in tmp_path.rglob("*") if f.is_file()] == []      # nothing ran


def test_the_peak_memory_logged_after_a_stage_counts_what_it_held():
    """runner.peak_rss_gb, in a fresh process: holding more than the peak so far (plus 0.25 GB)
    raises it to at least that, and to no more than the two together."""
    code = ("from nanosdm import runner; import torch; a = runner.peak_rss_gb(); "
            "x = torch.ones(int((a + 0.25) * 2**28)); print(a, runner.peak_rss_gb())")   # 4 bytes a float
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.split()
    before, after = map(float, out)
    assert 0.01 < before and before + 0.25 < after < 2 * before + 0.35, (before, after)
