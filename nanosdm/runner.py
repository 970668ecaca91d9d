"""
The stage runner behind train.py: which stages are out of date and why, running them in order, their
.done markers and report.json. train.py holds the configuration and the table of stages (`plan`);
this file holds how a table is run. Read train.py first.

    plan = dict(stages=[(name, build, evaluate, reads, extra, outputs), ...],   # in order
                opt_in={...}, eval_only={stage: [keys]}, global_keys=[...], parallel={...})

A stage's marker out/<preset>/<name>.done records the settings that shaped it (its own <name>_*
keys, its `extra` ones, the global ones), a stamp of this build, the stamps of the inputs it read, and
its figures. A stage is trained again when a setting its training reads changed or an input was
rebuilt; an evaluation-only setting (eval_only) evaluates it again and no more.
"""
import json
import os
import resource
import sys
import time

from nanosdm import utils


def _row(plan, name):
    return next(s for s in plan["stages"] if s[0] == name)


def stage_settings(cfg, plan, name):
    """The settings that shape a stage (what its marker records): its own <name>_* keys, the extra
    ones, the global ones, and the evaluation-only ones."""
    extra = list(_row(plan, name)[4]) + plan["eval_only"].get(name, [])
    return {k: cfg[k] for k in sorted(cfg)
            if k in plan["global_keys"] or k.startswith(f"{name}_") or any(k == e or (e.endswith("_") and k.startswith(e)) for e in extra)}


def training_settings(cfg, plan, name):
    """The settings its training depends on: stage_settings less the evaluation-only ones. The
    training loops record them in their checkpoints (utils.resume)."""
    return {k: v for k, v in stage_settings(cfg, plan, name).items() if k not in plan["eval_only"].get(name, [])}


def read_marker(out_dir, name):
    """A stage's .done marker: the settings that shaped it, the stamps of the inputs it read, its
    own stamp, and its figures (training and evaluation apart)."""
    path = os.path.join(out_dir, f"{name}.done")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        marker = json.load(f)
    return marker if "settings" in marker else None    # an older runner's marker: the stage runs again


def stage_reads(cfg, plan, name):
    """The stages whose outputs this one reads: the table's list, or its function of the config."""
    reads = _row(plan, name)[3]
    return reads(cfg) if callable(reads) else reads


def marker_changes(marker, now):
    """'key=old -> new, ...' for the settings in now that the marker recorded otherwise ("" if none)."""
    changed = [k for k in now if marker["settings"].get(k, now[k]) != now[k]]
    return ", ".join(f"{k}={marker['settings'][k]!r} -> {now[k]!r}" for k in changed[:4])


def why_stale(cfg, plan, name, markers):
    """Why the stage must be trained (built) again ("" if its marker is current): a setting its
    training reads changed, or an input was rebuilt. Evaluation-only settings: why_reevaluate."""
    reads = stage_reads(cfg, plan, name)
    marker = markers.get(name)
    if marker is None:
        return "not run yet"
    changed = marker_changes(marker, training_settings(cfg, plan, name))
    if changed:
        return "its settings changed: " + changed
    for r in reads:
        if markers.get(r) is not None and marker["reads"].get(r) != markers[r]["stamp"]:
            return f"its input {r!r} was rebuilt"
        if markers.get(r) is not None and why_stale(cfg, plan, r, markers):   # an input of an input: out of date too
            return f"its input {r!r} is out of date"
    return ""


def why_reevaluate(cfg, plan, name, markers):
    """Why a current stage must be evaluated again ("" if not): an evaluation-only setting changed."""
    marker = markers.get(name)
    eval_only = {k: cfg[k] for k in plan["eval_only"].get(name, [])}
    changed = marker_changes(marker, eval_only) if marker and eval_only else ""
    return "its evaluation settings changed: " + changed if changed else ""


def write_marker(out_dir, name, marker):
    tmp = os.path.join(out_dir, f"{name}.done.tmp")
    with open(tmp, "w") as f:
        json.dump(marker, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, f"{name}.done"))


def peak_rss_gb():
    """The most memory this process has held so far (its peak resident set): logged after each
    stage, so a run's peak can be traced to the stage that reached it."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20   # macOS counts bytes, Linux kB


def run(cfg, plan, retrain=False):
    """Run the stages cfg["stage"] asks for ("all": every one out of date, in order, less the opt-in
    ones; a name: that one, trained if out of date or --retrain, else evaluated again), then merge
    their figures into report.json. Under torchrun every rank trains the stages in plan["parallel"];
    rank 0 alone builds the others, evaluates, and writes markers and figures."""
    main_rank = utils.is_main()
    log = print if main_rank else (lambda *a, **k: None)
    log(f"nanosdm: preset={cfg['preset']} device={cfg['device']} out={cfg['out_dir']}"
        + (f", {utils.world_size()} ranks (torchrun)" if utils.world_size() > 1 else ""))
    names = [s[0] for s in plan["stages"]]
    markers = {n: read_marker(cfg["out_dir"], n) for n in names}
    for name, build, evaluate, _, _, outputs in plan["stages"]:
        if cfg["stage"] != name and (cfg["stage"] != "all" or name in plan["opt_in"]):
            continue
        why = why_stale(cfg, plan, name, markers)
        why_eval = "" if why else why_reevaluate(cfg, plan, name, markers)
        if cfg["stage"] == "all" and not why and not why_eval:
            log(f"[{name}] up to date, skipped (--stage={name} evaluates it again, --stage={name} --retrain trains it again)")
            continue
        for r in stage_reads(cfg, plan, name):   # asked for by name while an input is itself out of date: say so, go on
            if cfg["stage"] == name and markers[r] and why_stale(cfg, plan, r, markers):
                log(f"[{name}] warning: its input {r!r} is out of date ({why_stale(cfg, plan, r, markers)}); "
                    f"{name} uses it as it is (python train.py rebuilds both)")
        marker = markers[name]
        utils.seed_everything(cfg["seed"])
        t0 = time.time()
        if build is not None and (why or retrain):
            log(f"[{name}] starting" + (f": {why}" if marker and why else "") + (" (--retrain)" if retrain else ""))
            if retrain and main_rank:       # from scratch: no checkpoint to resume
                for f in outputs:
                    if os.path.exists(os.path.join(cfg["out_dir"], f)):
                        os.remove(os.path.join(cfg["out_dir"], f))
            utils.barrier()
            # the training loops record the settings they depend on in their checkpoints (utils.resume)
            stage_cfg = dict(cfg, train_settings=training_settings(cfg, plan, name))
            trained = (build(stage_cfg) or {}) if main_rank or name in plan["parallel"] else {}
            trained[f"{name}_seconds"] = round(time.time() - t0, 1)
            stamp = f"{time.time_ns():x}"   # this build's id: the stages that read it record it
        else:
            why = why or why_eval
            log(f"[{name}] " + (f"{why}: evaluating it" if why else "up to date: evaluating it again (--retrain trains it again)"
                                if evaluate is not None else "up to date, nothing to evaluate (--retrain builds it again)"))
            trained, stamp = (marker["train"], marker["stamp"]) if marker else ({}, "none")
        utils.barrier()
        if main_rank:               # rank 0 alone evaluates and writes the figures and the marker
            t1 = time.time()
            measured = {}
            if evaluate is not None:
                measured = evaluate(cfg) or {}
                measured[f"{name}_eval_seconds"] = round(time.time() - t1, 1)
            old = set(marker["train"]) | set(marker["eval"]) if marker else set()
            markers[name] = dict(settings=stage_settings(cfg, plan, name), stamp=stamp, train=trained, eval=measured,
                                 reads={r: markers[r]["stamp"] for r in stage_reads(cfg, plan, name) if markers[r]})
            write_marker(cfg["out_dir"], name, markers[name])
            report = utils.update_report(cfg["out_dir"], {**trained, **measured}, drop=old)
            print(f"[{name}] done in {time.time() - t0:.1f}s, peak memory so far {peak_rss_gb():.1f} GB: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in {**trained, **measured}.items()))
            # figures later stages derived from what this stage rebuilt are dropped, never left stale
            for later in names[names.index(name) + 1:]:
                m = markers[later]
                lwhy = why_stale(cfg, plan, later, markers)
                if m and lwhy and (m["train"] or m["eval"]):
                    gone = set(m["train"]) | set(m["eval"])
                    report = utils.update_report(cfg["out_dir"], {}, drop=gone)
                    markers[later] = dict(m, train={}, eval={})
                    write_marker(cfg["out_dir"], later, markers[later])
                    if cfg["stage"] != "all":
                        print(f"[{later}] out of date ({lwhy}): its {len(gone)} figures were dropped from "
                              f"report.json; python train.py reruns it")
            print(f"[{name}] figures merged into {os.path.join(cfg['out_dir'], 'report.json')} ({len(report)} in all)")
        utils.barrier()
        markers = {n: read_marker(cfg["out_dir"], n) for n in names}   # every rank sees what rank 0 wrote

