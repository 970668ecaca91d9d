"""
Train every stage of nanosdm, in order, on one machine.

    python train.py                       # all stages, tiny preset (a 2-core CPU, minutes)
    python train.py --preset=small        # one GPU
    python train.py --stage=text          # one stage: trains it if out of date, else evaluates it again
    python train.py --stage=text --retrain    # trains it again from scratch
    python train.py --preset=tiny --text_max_steps=100 --device=cpu
    torchrun --standalone --nproc_per_node=4 train.py --preset=small   # data parallel over 4 GPUs (or CPU workers)
    python train.py --stage=paradigms     # opt-in (OPT_IN): the survey's paradigms side by side, after the others

Configuration is nanoGPT-style: the defaults below are plain values, a preset overrides some of
them, and --key=value overrides anything (an unknown key or a value of the wrong type is an error).
Every stage reads what earlier stages wrote under out/<preset>/ and data/<preset>/, writes its
checkpoint there, and merges its measured figures into out/<preset>/report.json. Its marker
out/<preset>/<stage>.done records the settings that shaped it and which build of each input it read:
change a setting (or rebuild an input) and `python train.py` runs that stage and the ones after it
again (a setting only its evaluation reads, EVAL_ONLY, evaluates it again and no more); the figures
of stages left out of date are dropped from report.json, never kept stale.
"""
import importlib
import os
import sys

from nanosdm import runner, utils

# -----------------------------------------------------------------------------
# defaults (the tiny preset)
preset = "tiny"
stage = "all"          # "all" runs every stage that is out of date, in order; a name runs (or re-evaluates) that one
device = "auto"        # auto -> cuda, mps or cpu
seed = 1337
data_root = "data"
out_root = "out"
workers = 0            # processes for data generation; 0 -> all cores
# --- data: the SpokenWorld corpus (nanosdm/corpus/spokenworld.py)
data_entities = 200            # entities in the world
data_text_only_frac = 0.15     # entities whose facts appear in text only, never in speech
data_text_docs = 20000         # text-corpus documents (facts and dialogues)
data_dialogues = 130           # spoken training dialogues (~1 hour for tiny)
data_eval_dialogues = 16       # dialogues in each spoken evaluation split
speech_data = "spokenworld"    # the speech units, codec, asr, speech, align and sft train on (nanosdm/corpus/realdata.py):
                               # spokenworld | librispeech:PATH | moshi:PATH | a mix: kind[:PATH]:WEIGHT,...
speech_eval_data = ""          # the corpus of the _real figures (e.g. librispeech:PATH/test-clean); "": held-out speakers
# --- tokenizer (nanosdm/tokenizer.py)
tokenizer_vocab_size = 1024    # SentencePiece BPE pieces, special ids included
tokenizer_extra_text = ""      # comma-separated plain-text files to train the tokenizer on as well
# --- text (nanosdm/textlm.py)
text_n_layer = 4
text_n_head = 4
text_d_model = 128
text_block_size = 256          # tokens per training window: covers the dual-stream context (dual_context)
text_dropout = 0.0
text_batch_size = 32           # x 256 tokens (at 16, name-memory QA fell from 78% to 2%)
text_grad_accum = 1            # micro-batches per optimizer step
text_max_steps = 300
text_lr = 6e-3
text_embed_lr_mult = 10.0      # embedding and output head train at text_lr * this
text_warmup = 50
text_weight_decay = 0.1
text_grad_clip = 1.0
text_eval_interval = 50        # steps between validation losses
text_eval_batches = 8
text_ckpt_interval = 100       # steps between checkpoints (a killed run resumes from the last)
# --- units (nanosdm/units.py, trained by nanosdm/unitstrain.py)
units_k = 100                  # final units: k-means clusters on the encoder's middle layer
units_k_targets = 100          # iteration-1 targets: k-means clusters on MFCC frames
units_targets = "canonical"    # iteration-1 targets: MFCC k-means of each turn re-spoken in one
                               # canonical voice, DTW-aligned ("canonical"), or of the turn itself ("mfcc": HuBERT)
units_n_layer = 4
units_n_head = 4
units_d_model = 128
units_layer = 2                # the block whose output is clustered (1-based, a middle one); 3, nearer the CTC head:
                               # names in single questions +1.5-2 after sft at two seeds, but spoken QA -5 to -7 points
units_causal = True            # causal attention and convolutions, a fixed mel normalisation: units that
units_window = 100             # ... stream (UnitStream) for the dual-stream model's ear; the frames each position attends to (0: all)
units_proj_dim = 64            # space of the cosine-similarity logits
units_temperature = 0.1
units_mask_prob = 0.08         # share of frames that start a masked span
units_mask_len = 10            # frames per masked span (200 ms)
units_unmasked_weight = 1.0    # loss on visible frames, relative to masked ones; 0 = masked only (HuBERT)
units_warp = 0.15              # random mel-axis stretch of the input, +-warp (speaker perturbation)
units_warp_knots = 1           # ... one factor for the whole axis, or one at each of this many bands (formants apart)
units_echo = 0.25              # share of training crops given an echo (corpus/audio.add_echo; eSpeak's echo voices):
                               # with units_ctc_steps=1000, names in 400 unseen-voice questions after sft 71 -> 78-79% at
                               # two seeds (0.5 with 3 knots and no CTC: the echo voice 28 -> 47%, the others lose as much)
units_crop_seconds = 2.0       # training crop length
units_batch_size = 16
units_max_steps = 1000
units_lr = 1e-3
units_warmup = 50
units_weight_decay = 0.01
units_grad_clip = 1.0
units_kmeans_iters = 20
units_ctc_steps = 1000         # then CTC on the training turns' characters, a head on the top block (unitstrain.ctc_finetune):
units_ctc_lr = 1e-3            # ... more phonetic units; with echo 0.25, names heard in dialogue 78.8% at two seeds vs
                               # 63.7/72.5%, spoken QA on unseen voices +3-6 text, +4-10 speech (0: no CTC phase, HuBERT's units)
units_ctc_data = "turns"       # CTC's speech: the training "turns", "scrambled" ones (random word order) or "both" pooled;
                               # scrambled: spoken QA of 183 questions +18 text at seed 1337, -11 at seed 2; text-only facts +7, +11;
                               # both: align's names in 400 single questions 79.2 -> 77.8%, their WER 9.2 -> 13.8% (seed 1337)
units_kmeans_frames = 150000   # frames k-means is fitted on (a random subset beyond that)
units_max_train_hours = 0.0    # speech used for training; 0 = all of the train split
units_ckpt_interval = 100
# --- codec (nanosdm/codec.py)
codec_dim = 128                # channels of the 12.5 Hz blocks (encoder and decoder); 192 gained 0.1 dB
codec_sub_dim = 64             # channels of the decoder's 50 Hz blocks; but a streamed frame fetches every
                               # weight: at half the bytes, compiled streaming ran 79x real time, not 34x
codec_enc_layers = 3
codec_dec_layers = 3
codec_sub_layers = 2
codec_kernel = 3               # causal depthwise conv taps (steps of 80 ms, or 20 ms at 50 Hz)
codec_latent_dim = 64
codec_n_q = 4                  # codebooks; bitrate = 12.5 Hz x n_q x log2(codebook_size)
codec_codebook_size = 256
codec_ema_decay = 0.99
codec_dead_frac = 0.1          # a code used < this x an average code's share is replaced
codec_commit_weight = 1.0
codec_distill_weight = 1.0     # codebook 0 -> units features (skipped if out/<preset>/units.pt is absent)
codec_wave_weight = 0.0        # L1 on the waveform, beside the multi-scale mel loss
codec_adv_weight = 0.0         # > 0: multi-scale STFT discriminator with feature matching
codec_fm_weight = 2.0
codec_adv_start = 0            # steps before the discriminator joins
codec_adv_frames = 12          # the discriminator sees one crop of this many frames per clip
codec_quantizer_dropout = 0.5  # share of batches that use a random number of codebooks
codec_skip_quant = 0.0         # share of each batch decoded unquantized (Mimi uses 0.5)
codec_vq_start = 100           # steps as a plain autoencoder before the k-means init of the codebooks
codec_init_batches = 8         # batches of latents the k-means init sees
codec_batch_size = 16
codec_segment_frames = 24      # 80 ms frames per training crop (1.92 s)
codec_max_steps = 1500
codec_lr = 2e-3
codec_warmup = 50
codec_grad_clip = 1.0
codec_autocast = False         # bf16 autocast: for GPUs (on an AVX2-only CPU bf16 is far slower)
codec_eval_clips = 48          # unseen-voice user turns the evaluation encodes
codec_ckpt_interval = 200
# --- asr (nanosdm/asr.py)
asr_n_layer = 4
asr_n_head = 4
asr_d_model = 192
asr_dropout = 0.0              # SpecAugment, echo and scrambled turns regularise enough
asr_batch_size = 16            # turns per step (about 25 s of audio)
asr_max_steps = 1000           # the stage's cost scales with this (1000: ~5 min on 2 CPU cores)
asr_lr = 2e-3
asr_warmup = 100
asr_scrambled_turns = 2000     # extra eSpeak turns of random words in training voices (0: corpus only)
asr_weight_decay = 0.01
asr_grad_clip = 1.0
asr_beam = 8                   # prefix beam width
asr_lm_order = 6               # characters of context of the beam search's character n-gram LM
asr_lm_weight = 0.2            # its weight in the beam score (chosen on the val split, held-out phrasings)
asr_char_bonus = 2.0           # score added per character, against the LM's bias to short outputs
asr_ckpt_interval = 100
# --- speech, align, sft: the dual-stream model (nanosdm/corpus/speech.py, dualstream.py, depth.py)
dual_context = 256             # steps the temporal transformer sees (20 s); the text LM's block_size covers it
dual_delays = ""               # per stream, comma-separated (1 text, K assistant, K user); "": Moshi's, the units undelayed
dual_user_text = True          # the text stream also transcribes the user (corpus/speech.py explains why)
dual_user_lag = 2              # frames from a heard word's end to its first token (names heard after align: 1: 58%, 2: 70%)
dual_markers = True            # turns open with USER/ASSISTANT and close with EOS, as in the text corpus
dual_ear = "units"             # what the user stream holds: the causal units' ids of each 80 ms (needs units_causal
                               # and units_window; corpus/speech.py), or "codec": the codec's codes (Moshi's symmetry;
                               # unseen-voice names heard after align: 7.5% against 23.8% through the units)
dual_ear_mlp = 0               # width of an MLP reading a frame's K user columns side by side, added to their sum (0: none)
dual_ear_conv = 64             # width of a causal convolution over the user's ids (dualstream.EarConv; 0: none):
                               # ... names heard after align, unseen voices, seeds 1337 / 2: 67.5 / 66.3% without, 76.3 / 75.0% with
dual_ear_init = "random"       # the user's unit tables start "random" or from the "units"' centroids (DualStream.init_ear_from_units):
                               # units: align WER 15-17% vs 20-23% (seeds 2, 1337), sft's spoken QA 2-4 points lower: kept off
dual_ear_noise = 0.0           # share of the user's ids replaced by random ones in align and sft (dualtrain.ear_noise)
dual_ear_warp = 0.0            # each training dialogue's user heard through a mel stretch of 1 +- warp (corpus/speech.py):
                               # 0.15: names in 400 unseen-voice questions after sft +3 points at seeds 1337 and 2, val QA -7: off
dual_heads = "depth"           # a step's K codes: "depth" (Moshi's depth transformer) or "parallel" (Mini-Omni's K heads, its delays)
dual_text = True               # the inner monologue; False: speech to speech, the text stream never read (Moshi's ablation)
dual_depth_layers = 2
dual_depth_heads = 4
dual_depth_d_model = 128
dual_pad_weight = 0.5          # text loss weight of PAD and EPAD (Moshi: 0.5)
dual_semantic_weight = 10.0    # codebook 0's audio loss weight against 1 for each acoustic codebook
dual_turn_weight = 1.0         # text-loss weight of the turn tokens USER, ASSISTANT, EOS (when to speak)
dual_start_frac = 0.0          # share of training windows opened at a dialogue's first frame (the conversation start)
speech_extra_dialogues = 1200  # training dialogues rendered by the speech stage beyond the corpus's (kept as codes only)
align_user_turns = 10000       # ASR-like single user turns synthesized for `align` (training voices)
align_assistant_turns = 2500   # TTS-like single assistant turns
align_scrambled_frac = 0.3     # share of the user turns that are scrambled words and names (forces listening)
align_freeze = False           # freeze the text LM's blocks, embedding and head (300 steps: WER 128% frozen, 54% not)
align_batch_size = 16
align_max_steps = 1000
align_lr = 2e-3
align_warmup = 50
align_text_frac = 0.2          # share of text-only batches (Moshi: half of its pre-training steps)
align_timed_frac = 0.0         # share of timed text batches: the text corpus's dialogues in the monologue's layout
align_ckpt_interval = 100
sft_freeze = False
sft_batch_size = 16
sft_max_steps = 800
sft_lr = 1e-3
sft_warmup = 30
sft_text_frac = 0.1
sft_timed_frac = 0.1           # (speech.timed_text), audio streams empty: facts reached in the layout the model speaks in
sft_align_frac = 0.2           # share of sft's speech windows from align's single turns: every name stays heard
                               # only listened to (windows.Listening); with timed text, text-only facts 8% -> 23% (docs/results.md)
sft_ckpt_interval = 100
sft_eval_history = 120         # frames of real dialogue heard before each evaluated question
# --- duplex (nanosdm/live.py, eval/duplex.py): when the model speaks, measured
duplex_model = "sft"           # the checkpoint measured: out/<preset>/<duplex_model>.pt
duplex_scenarios = 40          # scenarios of each kind: pause, turn, interrupt, backchannel, silence
duplex_dialogues = 4           # unseen-voice dialogues run free for the timing statistics
# --- dpo: preference optimisation on the model's own spoken replies (nanosdm/dpo.py)
dpo_questions = 200            # training-split spoken questions the sft model answers for the pairs
dpo_samples = 4                # replies sampled per question
dpo_text_temp = 0.7            # text sampling temperature of those replies (audio: as the evaluation, 0.8)
dpo_min_margin = 0.1           # replies with the same verdicts pair only if the judge's scores differ this much
dpo_max_pairs = 2              # pairs per question (best with worst, second best with second worst)
dpo_history = 40               # frames of history kept before each reply when scoring it (sampled after sft_eval_history)
dpo_beta = 0.1                 # the DPO paper's (Rafailov et al., 2023)
dpo_nll = 0.0                  # weight of the chosen reply's per-token NLL beside DPO's loss (RPO, Pang et al. 2024):
                               # 0.3 / 1.0 keep the chosen reward positive; spoken QA within the noise on 183 questions
dpo_batch_size = 8             # pairs per step
dpo_max_steps = 100
dpo_lr = 1e-4
dpo_warmup = 10
dpo_ckpt_interval = 25
dpo_eval_splits = "unseen_voice,val"   # spoken QA before and after on these splits (comma-separated): ~90
                                       # questions each, one split alone moves +-5 points by chance
# --- vocoder (nanosdm/vocoder.py): deduplicated units -> durations -> the codec's latent -> its decoder
vocoder_dim = 128
vocoder_kernel = 5             # causal taps at 50 Hz (100 ms) in the duration and frame networks
vocoder_dur_layers = 3
vocoder_frame_layers = 2
vocoder_latent_layers = 2
vocoder_batch_size = 16
vocoder_segment_frames = 24    # codec frames per training crop (1.92 s)
vocoder_max_steps = 600 
vocoder_lr = 2e-3
vocoder_warmup = 50
vocoder_mel_weight = 0.2       # the codec's log-mel loss (dB) on the decoded audio, beside the latent MSE
vocoder_ckpt_interval = 200
vocoder_eval_turns = 150       # held-out assistant turns resynthesized for the evaluation
# --- omni (nanosdm/omni.py, ctc.py): LLaMA-Omni's way, speech adapter -> text LM -> CTC speech decoder
omni_extra_exchanges = 6000    # synthesized spoken questions beyond the corpus's 703 exchanges (0: corpus only)
omni_k = 3                     # ASR encoder frames (30 ms) concatenated per LM position: 90 ms
omni_adapter_hidden = 512
omni_tune_lm = True            # also tune the text LM's blocks in (1), embedding and head frozen (600 steps: QA 14% vs 7-10% frozen, retention 100% both)
omni_lm_lr_mult = 0.1          # their LR, relative to omni_lr
omni_batch_size = 16
omni_adapter_steps = 600
omni_lr = 1e-3
omni_warmup = 30
omni_lambda = 25               # upsampling of the text states (LLaMA-Omni: 25); must reach units / tokens
omni_dec_layers = 2
omni_dec_heads = 4
omni_dec_d_model = 128
omni_decoder_steps = 600
omni_dec_lr = 1e-3
omni_ckpt_interval = 100
omni_omega = 10                # units per vocoder chunk: the first audio waits for this many
# --- paradigms: the survey's paradigm table, every row from the text LM at one budget (nanosdm/paradigms.py,
# flat.py, eval/paradigms.py; docs/paradigms.md). Not part of `python train.py`: python train.py --stage=paradigms
paradigms_steps = 600          # optimizer steps of every row. The whole stage at tiny on a 2-core CPU: 300 steps 16 min,
                               # 600 steps 36 min (1,825 s training, 359 s evaluation), within the 40 asked
                               # (docs/paradigms.md); at 300 no row passed 8.4% spoken QA
paradigms_rows = "all"         # the rows trained and measured: all, or names (nanosdm/paradigms.py ROWS), comma-separated
paradigms_batch_size = 16      # examples per step, every row: 20 s dialogue windows, flat sequences, spoken exchanges
paradigms_moshi_depth_layers = 2       # the depth heads' sizes that put the dual-stream rows and text_out within
paradigms_moshi_depth_d_model = 48     # 10% of one another (tiny, with the ear's convolution: moshi 1.58M, mini_omni
paradigms_s2s_depth_layers = 2         # 1.50M, s2s_duplex 1.55M, text_out 1.47M; the default depth head gives moshi 2.17M)
paradigms_s2s_depth_d_model = 96
paradigms_text_out_adapter_hidden = 640        # 512 before the ear's convolution (docs/paradigms.md's table)
flat_block_size = 512          # positions of a flat sequence (a chain-of-modality dialogue is ~250 ids)
flat_init = "mean"             # the new unit and marker rows: "mean" of the text rows (+ noise) or "normal" (flat.grow)
flat_lr = 2e-3                 # align's: a start from the text LM
flat_embed_lr_mult = 10.0      # the embedding and head, where the new rows are, learn faster (as textlm's)
flat_warmup = 50
flat_weight_decay = 0.0
flat_grad_clip = 1.0
flat_pretrain_frac = 0.5       # Spirit-LM's rows: this share of the steps is interleaved pre-training
flat_eval_interval = 100
flat_eval_batches = 4
flat_ckpt_interval = 100

presets = {
    "tiny": {},
    "small": dict(
        data_entities=1000, data_text_docs=200000, data_dialogues=7000, data_eval_dialogues=200,
        tokenizer_vocab_size=4096,
        units_k=500, units_n_layer=8, units_n_head=6, units_d_model=384, units_layer=4, units_proj_dim=256,
        units_crop_seconds=4.0, units_batch_size=32, units_max_steps=20000, units_warmup=1000,
        units_kmeans_frames=1000000, units_max_train_hours=20.0, units_ckpt_interval=2000,
        text_n_layer=8, text_n_head=8, text_d_model=512, text_block_size=512, text_batch_size=32,
        text_max_steps=3000, text_lr=3e-3, text_warmup=200, text_eval_interval=250, text_ckpt_interval=500,
        codec_dim=384, codec_sub_dim=192, codec_enc_layers=4, codec_dec_layers=4, codec_latent_dim=128,
        codec_n_q=8, codec_codebook_size=1024, codec_batch_size=64, codec_segment_frames=32,
        codec_max_steps=6000, codec_vq_start=500, codec_init_batches=4, codec_adv_weight=1.0,
        codec_adv_start=2000, codec_autocast=True, codec_eval_clips=200, codec_ckpt_interval=1000,
        asr_n_layer=8, asr_n_head=6, asr_d_model=384, asr_batch_size=64, asr_max_steps=6000, asr_lr=1e-3,
        asr_warmup=500, asr_scrambled_turns=10000, asr_ckpt_interval=1000,
        dual_context=512, dual_depth_layers=4, dual_depth_heads=8, dual_depth_d_model=256,
        speech_extra_dialogues=0, align_user_turns=50000, align_assistant_turns=15000,
        align_batch_size=32, align_max_steps=6000, align_lr=1e-3, align_warmup=300, align_ckpt_interval=1000,
        sft_batch_size=32, sft_max_steps=6000, sft_lr=5e-4, sft_warmup=200, sft_ckpt_interval=1000,
    ),
}
# -----------------------------------------------------------------------------


def parse_config(argv):
    """Defaults <- preset <- --key=value, every override checked against the defaults."""
    cfg = {k: v for k, v in globals().items()
           if not k.startswith("_") and isinstance(v, (int, float, str, bool))}
    overrides = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"expected --key=value, got {arg!r}")
        key, value = arg[2:].split("=", 1)
        if key not in cfg:
            raise SystemExit(f"unknown config key --{key} (known: {', '.join(sorted(cfg))})")
        overrides[key] = _convert(key, value, type(cfg[key]))
    name = overrides.get("preset", cfg["preset"])
    if name not in presets:
        raise SystemExit(f"unknown preset {name!r} (known: {', '.join(presets)})")
    cfg.update(presets[name])
    cfg.update(overrides)
    return cfg


def _convert(key, value, kind):
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return kind(value)
    except ValueError:
        raise SystemExit(f"--{key}={value}: expected a {kind.__name__}") from None


# -----------------------------------------------------------------------------
# the stages, in order. Each has a build/train step (writes its outputs under out/ or data/ and
# returns its training figures) and an evaluation (reads those outputs, returns the figures
# measured on them); either may be missing. `reads` names the stages whose outputs it uses: when
# one of them is rebuilt, this stage is out of date too.

def step(module, function, *args):
    """nanosdm.<module>.<function>(cfg, *args), imported only when the stage runs."""
    return lambda cfg: getattr(importlib.import_module(f"nanosdm.{module}"), function)(cfg, *args)


SPEECH_KEYS = ["speech_data", "speech_eval_data"]   # where the speech comes from (nanosdm/corpus/realdata.py)


def speech_reads(cfg):
    """The speech stage reads the recognizer too when it aligns a real corpus's utterances, and the
    units when the user is heard through them."""
    return ["data", "tokenizer", "codec"] + ["asr"] * (cfg["speech_data"] != "spokenworld") + ["units"] * (cfg["dual_ear"] == "units")


# name, train/build, evaluate, the stages it reads, the settings that shape it beyond its own
# <name>_* keys, the outputs --retrain deletes first (so it starts from scratch)
STAGES = [
    ("data", step("corpus.spokenworld", "build"), None, [], [], []),
    ("tokenizer", step("tokenizer", "build"), None, ["data"], [], ["tokenizer.model"]),
    ("text", step("textlm", "train"), step("eval.metrics", "evaluate_text_checkpoint"),   # the text LLM first (§4.2.1)
     ["data", "tokenizer"], [], ["text.pt"]),
    ("units", step("unitstrain", "train"), step("eval.metrics", "evaluate_units_checkpoint"), ["data"], SPEECH_KEYS, ["units.pt"]),
    ("codec", step("codec", "train"), step("eval.metrics", "evaluate_codec_checkpoint"),  # codebook 0 distilled toward the units
     ["data", "units"], SPEECH_KEYS, ["codec.pt"]),
    ("asr", step("asr", "train"), step("eval.metrics", "evaluate_asr_checkpoint"),         # judges the codec's audio too
     ["data", "codec"], SPEECH_KEYS, ["asr.pt"]),
    ("speech", step("corpus.speech", "build"), None, speech_reads,                      # both channels to codes, align's utterances
     ["dual_user_text", "dual_user_lag", "dual_markers", "dual_ear", "dual_ear_warp", "align_user_turns", "align_assistant_turns", "align_scrambled_frac"], []),
    ("align", step("dualtrain", "train", "align"), step("eval.dialogue", "evaluate_align"),   # hear and speak
     ["text", "speech", "asr"], ["dual_"] + SPEECH_KEYS, ["align.pt"]),
    ("sft", step("dualtrain", "train", "sft"), step("eval.dialogue", "evaluate_sft"),   # full-duplex dialogues
     ["align", "asr"], ["dual_"] + SPEECH_KEYS, ["sft.pt"]),
    ("duplex", None, step("eval.duplex", "evaluate_duplex"), ["sft", "asr"], [], []),   # when it speaks
    ("dpo", step("dpo", "train_stage"), step("eval.dpo", "evaluate"),   # preference optimisation
     ["sft", "asr"], ["sft_eval_history"], ["dpo.pt"]),
    ("vocoder", step("vocoder", "train"), step("eval.omni", "evaluate_vocoder"),   # LLaMA-Omni's way
     ["units", "codec", "asr"], [], ["vocoder.pt"]),
    ("omni", step("omni", "train"), step("eval.omni", "evaluate_omni"),
     ["text", "asr", "units", "vocoder"], [], ["omni_adapter.pt", "omni.pt"]),
    ("paradigms", step("paradigms", "train"), step("eval.paradigms", "evaluate"),   # the survey's table (opt-in)
     ["text", "speech", "asr", "vocoder"], ["dual_", "flat_", "sft_", "align_lr", "align_warmup", "omni_k",
                                            "omni_tune_lm", "omni_lm_lr_mult", "omni_lr", "omni_warmup"] + SPEECH_KEYS,
     [f"paradigm_{r}.{ext}" for r in ("moshi", "mini_omni", "s2s_duplex", "text_out", "flat") for ext in ("pt", "json")]
     + [f"flat_{r}.pt" for r in ("chain", "pretrain", "spirit", "spirit_words", "s2s")]),
]
OPT_IN = {"paradigms"}   # stages that `python train.py` leaves out: they run when named (--stage=paradigms)
GLOBAL_KEYS = ["seed"]   # settings that shape every stage
# settings that only a stage's evaluation reads (its own or another stage's): a change evaluates the
# stage again on its checkpoint, which is not trained again, so the stages that read its outputs stay
# current. sft_eval_history is evaluation-only for sft, but dpo collects its pairs with it: it is
# among dpo's extra settings, so a change trains dpo again. sft's evaluation transcribes with asr_beam.
EVAL_ONLY = {
    "codec": ["codec_eval_clips"],
    "asr": ["asr_beam"],
    "sft": ["sft_eval_history", "asr_beam"],
    "dpo": ["dpo_eval_splits"],
    "vocoder": ["vocoder_eval_turns"],
    "omni": ["omni_omega"],
    "paradigms": ["sft_eval_history", "asr_beam"],
}


PARALLEL = {"text", "units", "codec", "asr", "align", "sft", "dpo", "vocoder", "omni"}  # train on every rank


def main(argv):
    retrain = "--retrain" in argv
    cfg = parse_config([a for a in argv if a != "--retrain"])
    cfg["device"] = utils.ddp_setup(utils.get_device(cfg["device"]))
    cfg["data_dir"] = os.path.join(cfg["data_root"], cfg["preset"])
    cfg["out_dir"] = os.path.join(cfg["out_root"], cfg["preset"])
    os.makedirs(cfg["out_dir"], exist_ok=True)
    names = [s[0] for s in STAGES]
    if cfg["stage"] != "all" and cfg["stage"] not in names:
        raise SystemExit(f"unknown stage {cfg['stage']!r} (stages: {', '.join(names)})")
    if retrain and cfg["stage"] == "all":
        raise SystemExit("--retrain goes with one stage: --stage=NAME --retrain")
    from nanosdm.corpus import realdata
    for key in SPEECH_KEYS:            # a bad corpus setting is refused now, not when a stage first reads it
        try:
            cfg[key] and realdata.parse(cfg[key])
        except ValueError as e:
            raise SystemExit(f"--{key}={cfg[key]}: {e}") from None
    if cfg["dual_ear"] == "units" and cfg["codec_n_q"] % 4:   # a frame's user columns hold its 4 units (corpus/speech.py)
        raise SystemExit(f"--dual_ear=units needs --codec_n_q a multiple of 4 (got {cfg['codec_n_q']}); or --dual_ear=codec")
    if cfg["dual_ear_init"] not in ("random", "units") or (cfg["dual_ear_init"] == "units" and cfg["dual_ear"] != "units"):
        raise SystemExit(f"--dual_ear_init={cfg['dual_ear_init']}: random, or units (the units' centroids, with --dual_ear=units)")
    runner.run(cfg, dict(stages=STAGES, opt_in=OPT_IN, eval_only=EVAL_ONLY, global_keys=GLOBAL_KEYS, parallel=PARALLEL),
               retrain)


if __name__ == "__main__":
    main(sys.argv[1:])
