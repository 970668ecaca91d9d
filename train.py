"""
Train every stage of nanosdm, in order, on one machine.

    python train.py                       # all stages, tiny preset (a 2-core CPU, minutes)
    python train.py --preset=small        # one GPU
    python train.py --stage=text          # one stage (runs it again even if finished)
    python train.py --preset=tiny --text_max_steps=100 --device=cpu

Configuration is nanoGPT-style: the defaults below are plain values, a preset overrides some of
them, and --key=value overrides anything (an unknown key or a value of the wrong type is an error).
Every stage reads what earlier stages wrote under out/<preset>/ and data/<preset>/, writes its
checkpoint there, and merges its measured figures into out/<preset>/report.json.
"""
import json
import os
import sys
import time

from nanosdm import utils

# -----------------------------------------------------------------------------
# defaults (the tiny preset)
preset = "tiny"
stage = "all"          # "all" runs every unfinished stage in order; a stage name runs that one
device = "auto"        # auto -> cuda, mps or cpu
seed = 1337
data_root = "data"
out_root = "out"
workers = 0            # processes for data generation; 0 -> all cores
# --- data: the SpokenWorld corpus (nanosdm/data.py)
data_entities = 200            # entities in the world
data_text_only_frac = 0.15     # entities whose facts appear in text only, never in speech
data_text_docs = 20000         # text-corpus documents (facts and dialogues)
data_dialogues = 130           # spoken training dialogues (~1 hour for tiny)
data_eval_dialogues = 16       # dialogues in each spoken evaluation split
speech_data = "spokenworld"    # the speech units, codec, asr, speech, align and sft train on (nanosdm/realdata.py):
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
# --- units (nanosdm/units.py)
units_k = 100                  # final units: k-means clusters on the encoder's middle layer
units_k_targets = 100          # iteration-1 targets: k-means clusters on MFCC frames
units_targets = "canonical"    # iteration-1 targets: MFCC k-means of each turn re-spoken in one
                               # canonical voice, DTW-aligned ("canonical"), or of the turn itself ("mfcc": HuBERT)
units_n_layer = 4
units_n_head = 4
units_d_model = 128
units_layer = 2                # the block whose output is clustered (1-based, a middle one)
units_proj_dim = 64            # space of the cosine-similarity logits
units_temperature = 0.1
units_mask_prob = 0.08         # share of frames that start a masked span
units_mask_len = 10            # frames per masked span (200 ms)
units_unmasked_weight = 1.0    # loss on visible frames, relative to masked ones; 0 = masked only (HuBERT)
units_warp = 0.15              # random mel-axis stretch of the input, +-warp (speaker perturbation)
units_crop_seconds = 2.0       # training crop length
units_batch_size = 16
units_max_steps = 1000
units_lr = 1e-3
units_warmup = 50
units_weight_decay = 0.01
units_grad_clip = 1.0
units_kmeans_iters = 20
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
# --- speech, align, sft: the dual-stream model (nanosdm/speech.py, dualstream.py, depth.py)
dual_context = 256             # steps the temporal transformer sees (20 s); the text LM's block_size covers it
dual_delays = ""               # per stream, comma-separated (1 text, K assistant, K user); "" = Moshi's 0,0,1,..
dual_user_text = True          # the text stream also transcribes the user (speech.py explains why)
dual_markers = True            # turns open with USER/ASSISTANT and close with EOS, as in the text corpus
dual_depth_layers = 2
dual_depth_heads = 4
dual_depth_d_model = 128
dual_pad_weight = 0.5          # text loss weight of PAD and EPAD (Moshi: 0.5)
dual_semantic_weight = 10.0    # codebook 0's audio loss weight against 1 for each acoustic codebook
dual_turn_weight = 1.0         # text-loss weight of the turn tokens USER, ASSISTANT, EOS (when to speak)
dual_start_frac = 0.0          # share of training windows opened at a dialogue's first frame (the conversation start)
speech_extra_dialogues = 1200  # training dialogues rendered by the speech stage beyond the corpus's (kept as codes only)
speech_moshi_dir = ""          # a Moshi-finetune-style folder (stereo wav + word JSON) to encode as split `moshi`
align_user_turns = 10000       # ASR-like single user turns synthesized for `align` (training voices)
align_assistant_turns = 2500   # TTS-like single assistant turns
align_scrambled_frac = 0.3     # share of the user turns that are scrambled words and names (forces listening)
align_freeze = False           # freeze the text LM's blocks, embedding and head (300 steps: WER 128% frozen, 54% not)
align_batch_size = 16
align_max_steps = 1000
align_lr = 2e-3
align_warmup = 50
align_text_frac = 0.2          # share of text-only batches (Moshi: half of its pre-training steps)
align_ckpt_interval = 100
sft_freeze = False
sft_batch_size = 16
sft_max_steps = 800
sft_lr = 1e-3
sft_warmup = 30
sft_text_frac = 0.1
sft_ckpt_interval = 100
sft_eval_history = 120         # frames of real dialogue heard before each evaluated question
# --- duplex (nanosdm/duplex.py, evaluate_duplex.py): when the model speaks, measured
duplex_model = "sft"           # the checkpoint measured: out/<preset>/<duplex_model>.pt
duplex_scenarios = 40          # scenarios of each kind: pause, turn, interrupt, backchannel, silence
duplex_dialogues = 4           # unseen-voice dialogues run free for the timing statistics
duplex_text_temperature = 0.7  # Moshi's sampling of the text stream ...
duplex_text_top_k = 25
duplex_audio_temperature = 0.8  # ... and of the audio
duplex_audio_top_k = 250
# --- dpo: preference optimisation on the model's own spoken replies (nanosdm/dpo.py)
dpo_questions = 200            # training-split spoken questions the sft model answers for the pairs
dpo_samples = 4                # replies sampled per question
dpo_text_temp = 0.7            # text sampling temperature of those replies (audio: as the evaluation, 0.8)
dpo_min_margin = 0.1           # replies with the same verdicts pair only if the judge's scores differ this much
dpo_max_pairs = 2              # pairs per question (best with worst, second best with second worst)
dpo_history = 40               # frames of history kept before each reply when scoring it (sampled after sft_eval_history)
dpo_beta = 0.1                 # the DPO paper's (REFERENCE §6)
dpo_batch_size = 8             # pairs per step
dpo_max_steps = 100
dpo_lr = 1e-4
dpo_warmup = 10
dpo_ckpt_interval = 25
dpo_eval_splits = "unseen_voice"       # spoken QA before and after on these splits (comma-separated)
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
# the stages, in order: each takes the config and returns {metric: number} for report.json

def stage_data(cfg):
    from nanosdm import data
    return data.build(cfg)


def stage_tokenizer(cfg):
    from nanosdm import tokenizer
    return tokenizer.build(cfg)


def stage_text(cfg):
    from nanosdm import textlm
    return textlm.train(cfg)


def stage_units(cfg):
    from nanosdm import evaluate, units
    metrics = units.train(cfg)
    return dict(metrics, **evaluate.evaluate_units_checkpoint(cfg)) if metrics else metrics


def stage_codec(cfg):
    from nanosdm import codec, evaluate
    metrics = codec.train(cfg)
    return dict(metrics, **evaluate.evaluate_codec_checkpoint(cfg)) if metrics else metrics


def stage_asr(cfg):
    from nanosdm import asr, evaluate
    metrics = asr.train(cfg)
    return dict(metrics, **evaluate.evaluate_asr_checkpoint(cfg)) if metrics else metrics


def stage_speech(cfg):
    from nanosdm import speech
    return speech.build(cfg)


def stage_align(cfg):
    from nanosdm import dualstream, evaluate_dialogue
    metrics = dualstream.train(cfg, "align")
    return dict(metrics, **evaluate_dialogue.evaluate_align(cfg)) if metrics else metrics


def stage_sft(cfg):
    from nanosdm import dualstream, evaluate_dialogue
    metrics = dualstream.train(cfg, "sft")
    return dict(metrics, **evaluate_dialogue.evaluate_sft(cfg)) if metrics else metrics


def stage_duplex(cfg):
    from nanosdm import evaluate_duplex
    return evaluate_duplex.evaluate_duplex(cfg)


def stage_dpo(cfg):
    from nanosdm import evaluate_dpo
    return evaluate_dpo.run(cfg)


def stage_vocoder(cfg):
    from nanosdm import evaluate_omni, vocoder
    metrics = vocoder.train(cfg)
    return dict(metrics, **evaluate_omni.evaluate_vocoder(cfg)) if metrics else metrics


def stage_omni(cfg):
    from nanosdm import evaluate_omni, omni
    metrics = omni.train(cfg)
    return dict(metrics, **evaluate_omni.evaluate_omni(cfg)) if metrics else metrics


STAGES = [
    ("data", stage_data),
    ("tokenizer", stage_tokenizer),
    ("text", stage_text),          # the text LLM first, as in the survey's recipe (§4.2.1)
    ("units", stage_units),
    ("codec", stage_codec),        # distils codebook 0 toward the units
    ("asr", stage_asr),            # judges the codec's decoded audio too
    ("speech", stage_speech),      # both channels to codec codes, the inner-monologue text stream
    ("align", stage_align),        # the text LM learns to hear and to speak (single utterances)
    ("sft", stage_sft),            # full-duplex spoken dialogues
    ("duplex", stage_duplex),      # when it speaks: pauses, turn ends, interruptions, backchannels
    ("dpo", stage_dpo),            # preference optimisation on its own spoken replies, judged by the ear
    ("vocoder", stage_vocoder),    # LLaMA-Omni's way: units -> durations -> the codec's latent -> audio
    ("omni", stage_omni),          # ... speech adapter -> the text LM -> CTC speech decoder -> the vocoder
]


def main(argv):
    cfg = parse_config(argv)
    cfg["device"] = utils.get_device(cfg["device"])
    cfg["data_dir"] = os.path.join(cfg["data_root"], cfg["preset"])
    cfg["out_dir"] = os.path.join(cfg["out_root"], cfg["preset"])
    os.makedirs(cfg["out_dir"], exist_ok=True)
    names = [n for n, _ in STAGES]
    if cfg["stage"] != "all" and cfg["stage"] not in names:
        raise SystemExit(f"unknown stage {cfg['stage']!r} (stages: {', '.join(names)})")
    print(f"nanosdm: preset={cfg['preset']} device={cfg['device']} out={cfg['out_dir']}")
    for name, fn in STAGES:
        done_marker = os.path.join(cfg["out_dir"], f"{name}.done")
        if cfg["stage"] == "all" and os.path.exists(done_marker):
            print(f"[{name}] finished earlier, skipped (--stage={name} reruns it)")
            continue
        if cfg["stage"] not in ("all", name):
            continue
        print(f"[{name}] starting")
        utils.seed_everything(cfg["seed"])
        t0 = time.time()
        metrics = fn(cfg) or {}
        metrics[f"{name}_seconds"] = round(time.time() - t0, 1)
        report = utils.update_report(cfg["out_dir"], metrics)
        with open(done_marker, "w") as f:
            json.dump(metrics, f)
        print(f"[{name}] done in {metrics[f'{name}_seconds']:.1f}s: "
              + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        print(f"[{name}] figures merged into {os.path.join(cfg['out_dir'], 'report.json')} ({len(report)} in all)")


if __name__ == "__main__":
    main(sys.argv[1:])
