"""
Kill and resume, end to end: every training stage, run by `python train.py --stage=NAME` in a
subprocess on a tiny corpus, is killed with SIGKILL after its first checkpoint and run again with
the very same command; it must resume from the checkpoint's step (not from zero) and finish with
a checkpoint that loads with weights_only=True. A damaged checkpoint is refused by name.

One tiny run is built stage by stage (22 processes, ~100 s of CPU); each training stage's first run
is the one that is killed, so the run is built and the resumes are tested in one pass. Stage
`omni` has two phases with a checkpoint each (omni_adapter.pt, then omni.pt): it is killed twice.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40         # every training phase; the kill lands between the first checkpoint and the end
INTERVAL = 4       # checkpoint interval of every training phase
TINY = [           # tiny widths, a handful of dialogues, no extra synthesized speech, small evaluations
    "--device=cpu", "--workers=1", "--seed=3",
    "--data_entities=24", "--data_text_only_frac=0.25", "--data_text_docs=300", "--data_dialogues=4",
    "--data_eval_dialogues=1", "--tokenizer_vocab_size=160",
    # block 256: omni's prompts (spoken question + answer) and the retention prompts must fit
    "--text_n_layer=1", "--text_n_head=2", "--text_d_model=32", "--text_block_size=256", "--text_batch_size=4",
    "--text_warmup=2", "--text_eval_interval=50", "--text_eval_batches=1",
    "--units_k=16", "--units_k_targets=16", "--units_targets=mfcc", "--units_n_layer=2", "--units_n_head=2",
    "--units_d_model=32", "--units_layer=1", "--units_proj_dim=16", "--units_crop_seconds=1.0",
    "--units_batch_size=4", "--units_warmup=2", "--units_kmeans_iters=3", "--units_kmeans_frames=4000", "--units_ctc_steps=2",
    "--codec_dim=32", "--codec_sub_dim=16", "--codec_enc_layers=1", "--codec_dec_layers=1", "--codec_sub_layers=1",
    "--codec_latent_dim=8", "--codec_n_q=4", "--codec_codebook_size=16", "--codec_batch_size=2",
    "--codec_segment_frames=8", "--codec_vq_start=3", "--codec_init_batches=1", "--codec_warmup=2",
    "--codec_eval_clips=4",
    "--asr_n_layer=1", "--asr_n_head=2", "--asr_d_model=32", "--asr_batch_size=4", "--asr_warmup=2",
    "--asr_scrambled_turns=0", "--asr_beam=2",
    "--dual_context=96", "--dual_depth_layers=1", "--dual_depth_heads=2", "--dual_depth_d_model=16",
    "--speech_extra_dialogues=0", "--align_user_turns=16", "--align_assistant_turns=8",
    "--align_batch_size=2", "--align_warmup=2", "--sft_batch_size=2", "--sft_warmup=2", "--sft_eval_history=16",
    "--dpo_questions=4", "--dpo_samples=2", "--dpo_min_margin=0", "--dpo_batch_size=2", "--dpo_history=8",
    "--dpo_warmup=2", "--dpo_eval_splits=",
    "--vocoder_dim=16", "--vocoder_dur_layers=1", "--vocoder_frame_layers=1", "--vocoder_latent_layers=1",
    "--vocoder_batch_size=2", "--vocoder_segment_frames=8", "--vocoder_warmup=2", "--vocoder_eval_turns=4",
    "--omni_extra_exchanges=0", "--omni_adapter_hidden=32", "--omni_batch_size=2", "--omni_warmup=2",
    "--omni_dec_layers=1", "--omni_dec_heads=2", "--omni_dec_d_model=16",
]
# (stage, checkpoint, its max-steps key, its checkpoint-interval key), in the order they train;
# every phase runs STEPS steps and saves every INTERVAL
PHASES = [
    ("text", "text.pt", "text_max_steps", "text_ckpt_interval"),
    ("units", "units.pt", "units_max_steps", "units_ckpt_interval"),
    ("codec", "codec.pt", "codec_max_steps", "codec_ckpt_interval"),
    ("asr", "asr.pt", "asr_max_steps", "asr_ckpt_interval"),
    ("align", "align.pt", "align_max_steps", "align_ckpt_interval"),
    ("sft", "sft.pt", "sft_max_steps", "sft_ckpt_interval"),
    ("dpo", "dpo.pt", "dpo_max_steps", "dpo_ckpt_interval"),
    ("vocoder", "vocoder.pt", "vocoder_max_steps", "vocoder_ckpt_interval"),
    ("omni", "omni_adapter.pt", "omni_adapter_steps", "omni_ckpt_interval"),
    ("omni", "omni.pt", "omni_decoder_steps", "omni_ckpt_interval"),
]
TINY += sorted({f"--{key}={n}" for _, _, steps, every in PHASES for key, n in ((steps, STEPS), (every, INTERVAL))})
# every stage the trained ones read, in train.py's order (duplex only measures: nothing reads it)
STAGES = ["data", "tokenizer", "text", "units", "codec", "asr", "speech", "align", "sft", "dpo", "vocoder", "omni"]
# utils.resume: "resuming from PATH at step K"; units and omni: "units: resuming from step K"
RESUMED = re.compile(r"resuming from (?:\S+ at )?step (\d+)")
POLL_S, TIMEOUT_S = 0.005, 300


def command(root, stage):
    return [sys.executable, os.path.join(ROOT, "train.py"), f"--data_root={root / 'data'}",
            f"--out_root={root / 'out'}", f"--stage={stage}"] + TINY


def environment():
    # one thread per process: tiny models gain nothing from more, and the machine is shared
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def start(root, stage, log):
    with open(log, "w") as f:    # the child writes to its own copy of the descriptor
        return subprocess.Popen(command(root, stage), cwd=ROOT, env=environment(), stdout=f, stderr=subprocess.STDOUT)


def run_to_end(root, stage, log):
    proc = start(root, stage, log)
    rc = proc.wait(timeout=TIMEOUT_S)
    return rc, log.read_text()


def kill_after_checkpoint(root, stage, path, log):
    """Start the stage, SIGKILL it as soon as `path` exists; -> (its return code, the step in `path`)."""
    assert not os.path.exists(path), path
    proc = start(root, stage, log)
    t0 = time.time()
    while proc.poll() is None and not os.path.exists(path) and time.time() - t0 < TIMEOUT_S:
        time.sleep(POLL_S)
    proc.send_signal(signal.SIGKILL)        # a no-op when it has already exited
    rc = proc.wait()
    step = torch.load(path, weights_only=True)["step"] if os.path.exists(path) else None
    return rc, step


@pytest.fixture(scope="session")
def killed_run(tmp_path_factory):
    """Build the tiny run stage by stage; kill every training phase after its first checkpoint and
    run its stage again (once more per phase). -> (root, out_dir, {checkpoint: what happened})."""
    root = tmp_path_factory.mktemp("resume")
    out, logs = root / "out" / "tiny", root / "logs"
    logs.mkdir()
    results = {}
    for stage in STAGES:
        phases = [p for p in PHASES if p[0] == stage]
        for i, (_, ckpt, _, _) in enumerate(phases):
            log = logs / f"{stage}.{i}.log"
            rc, step = kill_after_checkpoint(root, stage, out / ckpt, log)
            results[ckpt] = dict(killed_rc=rc, killed_step=step, killed_log=log)
        rc, log = run_to_end(root, stage, logs / f"{stage}.{len(phases)}.log")
        assert rc == 0, f"stage {stage} failed:\n{log[-3000:]}"
        for i, (_, ckpt, _, _) in enumerate(phases):    # phase i is resumed by the run after its kill
            results[ckpt]["resumed_log"] = (logs / f"{stage}.{i + 1}.log").read_text()
    return root, out, results


@pytest.mark.parametrize("stage,ckpt", [p[:2] for p in PHASES], ids=[p[1][:-3] for p in PHASES])
def test_stage_resumes_after_sigkill(killed_run, stage, ckpt):
    root, out, results = killed_run
    r = results[ckpt]
    assert r["killed_rc"] == -signal.SIGKILL, \
        f"{stage} ended by itself (rc {r['killed_rc']}) before the kill:\n{r['killed_log'].read_text()[-3000:]}"
    k = r["killed_step"]
    assert k is not None and 0 < k < STEPS and k % INTERVAL == 0, f"{ckpt} held step {k} when {stage} was killed"
    resumed = [int(s) for s in RESUMED.findall(r["resumed_log"])]
    assert resumed == [k], f"the rerun of {stage} should resume {ckpt} at step {k}, it said {resumed}"
    final = torch.load(out / ckpt, weights_only=True)
    assert final["step"] == STEPS
    assert (out / f"{stage}.done").exists()


def test_dpo_resumed_reuses_its_preference_pairs(killed_run):
    """The pairs (the sft model's sampled and judged replies) are kept on disk: a rerun trains on
    them again instead of sampling and judging every reply once more."""
    root, out, results = killed_run
    first, resumed = results["dpo.pt"]["killed_log"].read_text(), results["dpo.pt"]["resumed_log"]
    assert "pairs from" in first and "pairs from" not in resumed, resumed[-2000:]


def test_truncated_checkpoint_is_refused_by_name(killed_run, tmp_path):
    """A checkpoint cut short (a full disk, a copy interrupted) stops the stage with an error that
    names the file and says how to recover; restored, the run is as before."""
    root, out, _ = killed_run
    path, done = out / "text.pt", out / "text.done"
    shutil.copy(path, tmp_path / "text.pt")
    shutil.copy(done, tmp_path / "text.done")
    try:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        done.unlink()                       # so that the runner trains (resumes) the stage
        rc, log = run_to_end(root, "text", tmp_path / "text.log")
        assert rc != 0
        assert f"cannot read checkpoint {path}" in log and "delete it" in log, log[-2000:]
    finally:
        shutil.copy(tmp_path / "text.pt", path)
        shutil.copy(tmp_path / "text.done", done)
