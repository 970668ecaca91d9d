import numpy as np
import pytest
import torch

from nanosdm import ctc, units, unitstrain
from nanosdm.eval import metrics


def test_dtw_recovers_a_known_time_warp():
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(30, 6, generator=gen) * 3                    # 30 distinct "canonical" frames
    # the same sequence spoken at a varying pace: frames held 1-3 times, some skipped
    warp = [0, 0, 1, 2, 2, 2, 3, 5, 6, 6, 7, 8, 9, 9, 9, 10, 11, 13, 14, 15, 15, 16, 17, 18, 19, 19,
            20, 21, 22, 22, 23, 24, 26, 27, 28, 29, 29]
    a = b[warp] + 0.1 * torch.randn(len(warp), 6, generator=gen)
    match = unitstrain.dtw_match(torch.cdist(a, b).numpy())
    assert match.tolist() == warp
    assert (np.diff(match) >= 0).all() and match[0] == 0 and match[-1] == 29


def test_stage_trains_resumes_and_reports(tmp_path):
    from nanosdm import utils
    from nanosdm.corpus import spokenworld
    cfg = dict(data_entities=24, data_text_only_frac=0.25, data_text_docs=50, data_dialogues=2,
               data_eval_dialogues=2, seed=3, workers=2, device="cpu",
               data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"),
               units_k=12, units_k_targets=10, units_n_layer=2, units_n_head=2, units_d_model=32,
               units_layer=1, units_proj_dim=16, units_temperature=0.1, units_mask_prob=0.08,
               units_mask_len=10, units_unmasked_weight=0.0, units_warp=0.1, units_warp_knots=3, units_echo=0.5, units_crop_seconds=1.0,
               units_batch_size=4, units_max_steps=6, units_lr=1e-3, units_warmup=2,
               units_weight_decay=0.01, units_grad_clip=1.0, units_kmeans_iters=5,
               units_kmeans_frames=5000, units_max_train_hours=0.0, units_ckpt_interval=2,
               units_targets="canonical", units_causal=False, units_window=0, units_ctc_steps=3, units_ctc_lr=1e-3,
               units_ctc_data="turns")
    spokenworld.build(cfg)
    with pytest.raises(ValueError, match="units_ctc_data"):        # refused before any step, nothing written
        unitstrain.train(dict(cfg, units_ctc_data="scrambed"))
    assert not (tmp_path / "out" / "units.pt").exists()
    assert unitstrain.train(cfg, stop_step=3) is None                  # "killed" after 3 steps
    partial = torch.load(tmp_path / "out" / "units.pt", weights_only=True)
    assert partial["step"] == 3 and not partial["finished"]
    figures = unitstrain.train(cfg)                                     # resumes at step 3
    figures.update(metrics.evaluate_units_checkpoint(cfg))        # what the stage runner does next
    final = torch.load(tmp_path / "out" / "units.pt", weights_only=True)
    assert final["finished"] and final["step"] == 6 and [h[0] for h in final["history"]] == list(range(6))
    assert figures["units_k"] == 12 and figures["units_ctc_loss"] > 0    # the CTC phase ran, after the resumed steps
    # CTC's other speech: turns of the training words in random order, whole 20 ms frames end to end
    _, _, texts = units.load_utterances(cfg["data_dir"], "train")
    stream, spans, said = unitstrain.scrambled_stream(dict(cfg, units_ctc_steps=3, units_batch_size=4), texts)
    assert len(said) == 6 and stream.dtype == torch.int16
    assert spans[0][0] == 0 and sum(n for _, n in spans) == len(stream) and all(n % units.HOP == 0 for _, n in spans)
    words = {w for t in texts for w in ctc.normalize_text(t).split()}
    assert sum(w in words for t in said for w in t.split()) > 0.5 * sum(len(t.split()) for t in said)
    assert {tuple(t.split()) for t in said}.isdisjoint({tuple(ctc.normalize_text(t).split()) for t in texts})
    # "both" pools the corpus's turns and the scrambled ones: every span still cuts out its own turn
    wavs, _, texts = units.load_utterances(cfg["data_dir"], "train")
    turns = torch.cat([(w * 32768.0).round().to(torch.int16) for w in wavs])
    turn_spans = [(int(sum(len(v) for v in wavs[:i])), len(w)) for i, w in enumerate(wavs)]
    small = dict(cfg, units_ctc_steps=3, units_batch_size=4)
    pooled, pooled_spans, pooled_texts = unitstrain.ctc_speech(dict(small, units_ctc_data="both"), turns, turn_spans, texts)
    assert pooled_texts == list(texts) + said and len(pooled) == len(turns) + len(stream)
    assert pooled_spans[:len(wavs)] == turn_spans
    o, n = pooled_spans[len(wavs)]
    assert o == len(turns) and torch.equal(pooled[o:o + n], stream[:n])          # the scrambled renders are seeded
    assert unitstrain.ctc_speech(dict(small, units_ctc_data="turns"), turns, turn_spans, texts)[2] is texts
    with pytest.raises(ValueError, match="units_ctc_data"):
        unitstrain.ctc_speech(dict(small, units_ctc_data="scrambed"), turns, turn_spans, texts)
    # the figures are those of the saved units on the unseen voice's user turns ...
    path = str(tmp_path / "out" / "units.pt")
    wavs, phones, _ = units.load_utterances(cfg["data_dir"], "unseen_voice", speaker="user")
    quality, ids, labels, inventory = metrics.evaluate_units(
        units.Units.load(path), utils.load_checkpoint(path)["mfcc_centroids"], wavs, phones)
    assert {k: figures[f"units_{k}"] for k in quality} == {k: round(v, 4) for k, v in quality.items()}
    # ... and well above chance: the same units shuffled over the frames (PNMI ~0.06 on these ~1000
    # frames, not 0: a small sample makes any labelling look a little informative)
    flat = [p for utterance in labels for p in utterance]
    spoken = torch.tensor([p is not None for p in flat])
    phone_ids = torch.tensor([inventory.index(p) for p in flat if p is not None])
    g = torch.Generator().manual_seed(0)
    for system in ("mfcc", "hubert"):                              # measured: 0.34 and 0.24-0.30
        u = torch.cat(ids[system])[spoken]
        shuffled = lambda: u[torch.randperm(len(u), generator=g)]
        chance = max(metrics.unit_quality(shuffled(), phone_ids, 12, len(inventory))["pnmi"] for _ in range(10))
        assert figures[f"units_pnmi_{system}"] > 2 * chance, (system, figures[f"units_pnmi_{system}"], chance)
        # labelling every unit with its own phone beats labelling all frames with the commonest phone
        assert figures[f"units_phone_purity_{system}"] > 2 * torch.bincount(phone_ids).max().item() / len(phone_ids)
    assert (tmp_path / "out" / "plots" / "units_cooccurrence.png").exists()
    assert (tmp_path / "out" / "plots" / "units_utterance.png").exists()
    u = units.Units.load(str(tmp_path / "out" / "units.pt"))
    assert u.encode(torch.zeros(3200)).shape == (10,)


def test_ctc_finetuning_learns_the_characters_through_every_block():
    from nanosdm.corpus import espeak
    texts = ["the cat sat on the mat", "where is the lezis", "a blue kotan owns four dogs", "what colour is the ditum"]
    wavs = [torch.as_tensor(espeak.synthesize(t, v)[0]) for t, v in zip(texts, ["en-us", "en-us+f2", "en", "en-us+m3"])]
    stream = torch.cat([(w * 32767).round().short() for w in wavs])
    spans = list(zip(np.cumsum([0] + [len(w) for w in wavs[:-1]]).tolist(), [len(w) for w in wavs]))
    torch.manual_seed(0)
    encoder = units.HubertEncoder(n_targets=10, n_layer=3, n_head=2, d_model=32, proj_dim=8, causal=True, window=50)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cfg = dict(device="cpu", seed=0, units_layer=2, units_ctc_steps=60, units_ctc_lr=3e-3, units_batch_size=4,
               units_warp=0.0, units_warp_knots=1, units_echo=0.0, units_warmup=5, units_weight_decay=0.0, units_grad_clip=1.0)
    history = unitstrain.ctc_finetune(encoder, stream, spans, texts, cfg)
    assert [h[0] for h in history] == list(range(60))
    first, last = history[0][1], np.mean([h[1] for h in history[-5:]])
    assert last < 0.6 * first, (first, last)
    after = encoder.state_dict()
    changed = lambda prefix: any(not torch.equal(after[k], before[k]) for k in after if k.startswith(prefix))
    assert all(changed(f"{p}") for p in ("conv1", "conv2", "transformer.blocks.0.", "transformer.blocks.2."))
    assert not changed("proj") and not changed("label_emb") and not changed("mask_emb")   # masked prediction's own
    assert torch.equal(after["mel_mean"], before["mel_mean"])


def test_notebook_02_gives_the_training_functions_every_key_they_read():
    """The notebook calls train_encoder and ctc_finetune with its own config dicts: a key added to
    the stage (units_echo did) must reach them too, or the notebook stops with a KeyError."""
    import ast, inspect, json, os, re
    path = os.path.join(os.path.dirname(__file__), "..", "notebooks", "02_units.ipynb")
    cells = ["".join(c["source"]) for c in json.load(open(path))["cells"] if c["cell_type"] == "code"]
    for fn, var in ((unitstrain.train_encoder, "cfg"), (unitstrain.ctc_finetune, "ctc_cfg")):
        read = set(re.findall(r'cfg\["(\w+)"\]', inspect.getsource(fn)))
        cell = next(c for c in cells if f"unitstrain.{fn.__name__}(" in c)
        call = next(n for n in ast.walk(ast.parse(cell)) if isinstance(n, ast.Assign) and n.targets[0].id == var)
        given = {k.arg for k in call.value.keywords}
        assert read - given == set(), f"notebook 02's {var} lacks {sorted(read - given)} for {fn.__name__}"
