"""train.py's configuration and stage runner."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402


def test_defaults_preset_and_overrides():
    cfg = train.parse_config([])
    assert cfg["preset"] == "tiny" and cfg["data_entities"] == train.data_entities
    small = train.parse_config(["--preset=small"])
    assert small["data_entities"] == train.presets["small"]["data_entities"]
    # an explicit override beats the preset, and is converted to the default's type
    cfg = train.parse_config(["--preset=small", "--data_entities=33", "--data_text_only_frac=0.5"])
    assert cfg["data_entities"] == 33 and cfg["data_text_only_frac"] == 0.5


@pytest.mark.parametrize("args,message", [
    (["--no_such_key=1"], "unknown config key --no_such_key"),
    (["--data_entities=lots"], "expected a int"),
    (["--preset=huge"], "unknown preset"),
    (["data_entities=3"], "expected --key=value"),
])
def test_bad_arguments_are_named(args, message):
    with pytest.raises(SystemExit, match=message):
        train.parse_config(args)


def test_stage_runner_skips_finished_stages(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(train, "STAGES", [("one", lambda cfg: calls.append("one") or {"one_x": 1.5}),
                                          ("two", lambda cfg: calls.append("two") or {"two_y": 2})])
    args = [f"--out_root={tmp_path}", f"--data_root={tmp_path}", "--device=cpu"]
    train.main(args)
    assert calls == ["one", "two"]
    report = json.load(open(tmp_path / "tiny" / "report.json"))
    assert report["one_x"] == 1.5 and report["two_y"] == 2 and "one_seconds" in report
    train.main(args)                                   # both finished: nothing runs again
    assert calls == ["one", "two"]
    train.main(args + ["--stage=two"])                 # asked for by name: runs again
    assert calls == ["one", "two", "two"]
    with pytest.raises(SystemExit, match="unknown stage"):
        train.main(args + ["--stage=nope"])
