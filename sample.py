"""
Talk to trained nanosdm checkpoints.

    python sample.py --text "what colour is the ditum?"       # the text LM (stage text) answers
    python sample.py --text "..." --temperature=0 --preset=small
    python sample.py                                          # a text chat: the dialogue so far is the context
    python sample.py --asr FILE.wav                           # the transcript of any wav (stage asr's recognizer)
    python sample.py --say "what colour is the ditum?"        # the dual-stream model hears eSpeak ask, and answers
    python sample.py --wav question.wav --out=answers/r1.wav  # ... or hears any wav (any rate, mixed to mono)
    python sample.py --scenario=interrupt --seed=3            # a full-duplex scenario: pause, turn, interrupt,
                                                              # backchannel or silence (stage duplex's kinds)
    python sample.py --model=omni --say "what colour is the ditum?"   # LLaMA-Omni's way (stage omni), half duplex
    python sample.py --serve                                  # talk to it: http://localhost:8000/, the microphone,
                                                              # full duplex (--model=omni: push to talk)

--say and --wav run the real streaming loop, 80 ms at a time: the codec's encoder step on the input
frame, one step of the dual-stream model (stage sft), the codec's decoder step on its reply frame.
They write reply.wav (stereo 16 kHz: channel 0 the model, channel 1 the user, as Moshi), reply.json
(`text`, `words` as [word, start_s, end_s], `onset_s`, `rtf`) and reply.png beside it.
--scenario writes scenario_<kind>.wav / .json (events, where the model spoke, the verdict) / .png (timeline).
--model=omni hears the whole question, then answers (greedy text; the speech decoder streams units
after each token and the vocoder speaks every --omega units); the same reply.wav / .json / .png.

The defaults are nanosdm/live.py's sampling (text, then audio: TEMPS, both greedy); --temperature=0.7 samples the text.
"""
import argparse
import os

import torch

from nanosdm import live, textlm, utils
from nanosdm.tokenizer import EOS, Tokenizer

# silence the full-duplex model hears before the user's turn, as on a call that is open before anyone
# speaks: asked in its first frame (--say, tiny), it wrote no transcript and answered about another
# creature ("the dabor is golden."); after 0.5 s or more of listening: "the ditum is red."
LEAD_IN_S = 1.0


def parse_args(argv=None):
    """The command line (sys.argv[1:] when argv is None); here, not at the top level, so that importing
    this file (a test, a notebook) parses and runs nothing."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--out_root", default="out")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--text", default=None, help="a question for the text LM; without it, a text chat")
    parser.add_argument("--temperature", type=float, default=live.TEXT_TEMP)
    parser.add_argument("--top_k", type=int, default=live.TEXT_TOP_K)
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--asr", default=None, metavar="FILE.wav",
                        help="print the transcript of a wav file (any rate, mono or stereo) and exit")
    parser.add_argument("--say", default=None, help="a question the dual-stream model hears in a voice it never heard")
    parser.add_argument("--wav", default=None, metavar="FILE.wav", help="a wav the dual-stream model hears as the user")
    parser.add_argument("--out", default="reply.wav", help="where --say/--wav write the reply (and .json, .png beside it)")
    parser.add_argument("--listen", type=float, default=4.0, help="seconds of silence after the input, for the answer")
    parser.add_argument("--scenario", default=None, choices=["pause", "turn", "interrupt", "backchannel", "silence"],
                        help="play one full-duplex scenario (nanosdm/eval/duplex.py) to the model: wav, json and timeline out")
    parser.add_argument("--model", default="sft", help="the dual-stream checkpoint: out/<preset>/<model>.pt, "
                        "or omni: LLaMA-Omni's way (stage omni)")
    parser.add_argument("--omega", type=int, default=10, help="--model=omni: units per vocoder chunk")
    parser.add_argument("--data_root", default="data")
    parser.add_argument("--audio_temperature", type=float, default=live.AUDIO_TEMP)
    parser.add_argument("--audio_top_k", type=int, default=live.AUDIO_TOP_K)
    parser.add_argument("--serve", action="store_true", help="serve the live page on localhost: talk to --model "
                        "(sft, dpo: full duplex; omni: push to talk) with the microphone (serve.py)")
    parser.add_argument("--port", type=int, default=8000, help="--serve: the port (0: any free one)")
    parser.add_argument("--threads", type=int, default=1, help="--serve: torch threads (batch 1: one is fastest at tiny)")
    parser.add_argument("--verbose", action="store_true", help="--serve: log every request")
    return parser.parse_args(argv)


def reply_text(args, model, tok, turns, device):
    """The assistant's next turn after the dialogue `turns`, sampled with the KV cache, cut at EOS."""
    prompt = tok.encode_prompt(turns)
    room = max(8, model.config["block_size"] - args.max_new_tokens)
    prompt = prompt[-room:]  # a long chat keeps its most recent tokens, leaving room for the answer
    idx = torch.tensor([prompt], device=device)
    new = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k)[0].tolist()
    return tok.decode(new[:new.index(EOS)] if EOS in new else new)


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, utils.CorruptCheckpoint) as e:
        # a stage not run yet or a damaged file: one line that names the path and what to do, no traceback
        raise SystemExit(f"sample.py: {e}")


def run(args):
    """What the command line asks for: --asr, --scenario, --say/--wav, --text, or a text chat."""
    torch.manual_seed(args.seed)
    device = utils.get_device(args.device)
    out_dir = os.path.join(args.out_root, args.preset)
    if args.asr is not None:
        from nanosdm.corpus import audio
        from nanosdm.asr import ASR
        asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
        try:
            wav = audio.load_wav(args.asr)  # resampled to 16 kHz, channels mixed down
            print(asr.transcribe(wav))
        except audio.AudioError as e:
            raise SystemExit(f"--asr: {e}" if args.asr in str(e) else f"--asr {args.asr}: {e}")
        return
    if args.serve:
        from nanosdm import serve
        return serve.main(args, out_dir, device)
    if args.scenario is not None:
        return scenario(args, out_dir, device)
    if (args.say is not None or args.wav is not None) and args.model == "omni":
        return converse_omni(args, out_dir, device)
    if args.say is not None or args.wav is not None:
        return converse(args, out_dir, device)
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    model = textlm.load_model(os.path.join(out_dir, "text.pt"), device)
    if args.text is not None:
        print(reply_text(args, model, tok, [["user", args.text]], device))
        return
    print("text chat with the text LM (empty line or Ctrl-D ends)")
    turns = []
    while True:
        try:
            line = input("you> ").strip().lower()
        except EOFError:
            break
        if not line:
            break
        turns.append(["user", line])
        answer = reply_text(args, model, tok, turns, device)
        turns.append(["assistant", answer])
        print(f"lm> {answer}")


def user_input(args, out_dir):
    """The user's turn at 16 kHz: eSpeak in an unseen voice (--say) or a wav file (--wav)."""
    from nanosdm.corpus import audio
    if args.wav is not None:
        try:
            return audio.load_wav(args.wav)
        except audio.AudioError as e:
            raise SystemExit(f"--wav: {e}")
    import json
    from nanosdm.corpus import espeak
    voice = "en-us+m3"
    corpus = os.path.join("data", args.preset, "corpus.json")
    if os.path.exists(corpus):  # a voice the model never heard in training
        with open(corpus) as f:
            unseen = json.load(f)["unseen_voices"]
        voice = unseen[args.seed % len(unseen)]
    check_creatures(args, args.say)
    wav, _, _ = espeak.synthesize(args.say.lower(), voice=voice, rate=170, pitch=50)
    print(f"user ({voice}): {args.say!r}")
    return torch.from_numpy(wav * 0.6 / max(1e-4, abs(wav).max()))


def check_creatures(args, text):
    """Asked about a creature the world does not hold, say which ones it does."""
    import json
    from nanosdm.corpus import spokenworld
    path = os.path.join("data", args.preset, "world.jsonl")
    if not os.path.exists(path):
        return
    world = [json.loads(line) for line in open(path)]
    known = {e["name"] for e in world} | {w.strip("?.,") for a in spokenworld.ATTRIBUTES.values() for q in a[2] + a[3]
                                          for w in q.split()} | set(spokenworld.NUMBERS) | set(spokenworld.PEOPLE) | set(spokenworld.TOWNS)
    unknown = [w.strip("?.,!") for w in text.lower().split() if w.strip("?.,!") not in known]
    if unknown:
        spoken = sorted(e["name"] for e in world if not e["text_only"])
        print(f"note: {', '.join(unknown)} is not a creature of this world; it has {len(world)}: "
              + ", ".join(spoken[:30]) + (" ..." if len(spoken) > 30 else ""))


def converse(args, out_dir, device):
    import json
    from nanosdm.corpus import audio
    from nanosdm.codec import FRAME, FRAME_S
    from nanosdm.eval import duplex
    tok, codec, model = load_dual(args, out_dir, device)
    heard = torch.cat([torch.zeros(int(LEAD_IN_S * audio.SAMPLE_RATE)), user_input(args, out_dir)])
    speech_end = float(len(heard)) / audio.SAMPLE_RATE
    wav = torch.cat([heard, torch.zeros(int(args.listen * audio.SAMPLE_RATE))])
    wav = torch.nn.functional.pad(wav, (0, -len(wav) % FRAME))
    ear = live.load_ear(model, out_dir, device)                  # the units, if the model hears through them
    out = live.live(model, codec, wav, temps=temps(args), ear=ear)   # what a live system does every 80 ms
    words = []   # [word, start_s, end_s]: a word ends where the next begins, or a word's length later
    for seg in duplex.monologue_segments(tok, out["text"]):
        starts = [s for _, s in seg["words"]] + [seg["end"]]
        words += [[w, round(s, 2), round(min(e, s + duplex.WORD_S), 2)] for (w, s), e in zip(seg["words"], starts[1:])]
    onset = next((s for w, s, e in words if s >= speech_end - FRAME_S), None)
    result = dict(text=" ".join(w[0] for w in words), words=words,
                  onset_s=None if onset is None else round(onset - speech_end, 3),
                  rtf=round(out["seconds"]["total"] / (len(wav) / audio.SAMPLE_RATE), 3))
    audio.save_wav(args.out, torch.stack([out["wav"], wav]))
    json_path = os.path.splitext(args.out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    plot_reply(out["wav"], wav, words, os.path.splitext(args.out)[0] + ".png")
    print(f"model: {result['text']!r} (onset {result['onset_s']} s after the question, real-time factor "
          f"{result['rtf']}); wrote {args.out} and {json_path}")


def converse_omni(args, out_dir, device):
    """Half duplex, LLaMA-Omni's way: the whole question through the frozen ear and the adapter,
    then the text answer with its speech streamed beside it. The reply starts where its first
    audio was ready (the question's end + the measured compute)."""
    import json
    import time
    from nanosdm import omni, omni_data
    from nanosdm.corpus import audio
    from nanosdm.asr import ASR
    from nanosdm.codec import Codec
    from nanosdm.vocoder import FRAME_MS, Vocoder, duration_frames
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    asr, codec = ASR.load(os.path.join(out_dir, "asr.pt"), device), Codec.load(os.path.join(out_dir, "codec.pt"), device)
    model, voc = omni.load_model(os.path.join(out_dir, "omni.pt"), device), Vocoder.load(os.path.join(out_dir, "vocoder.pt"), device)
    heard = user_input(args, out_dir)
    t0 = time.time()
    feats = omni_data.encode_speech(asr, [heard])[0]
    example = omni_data.make_example(dict(parts=[], question=feats), model.config["k"], model.lm.config["block_size"],
                                with_answer=False)   # a recording too long for the LM's block is refused by name
    out = omni.respond(model, example, voc, codec, args.omega, args.max_new_tokens, t0=t0)
    seconds = time.time() - t0
    onset = out["first_audio_s"] or 0.0
    start = len(heard) / audio.SAMPLE_RATE + onset
    # word times from the vocoder's durations: token i ends where the units emitted up to it end
    units = torch.tensor(out["units"], dtype=torch.long)
    frames = torch.cumsum(duration_frames(voc.durations(units[None].to(device))[0][0]).cpu(), 0).tolist() if len(units) else []
    end_of = lambda n: start + (frames[n - 1] if n else 0) * FRAME_MS / 1000
    words, prev = [], 0
    for tid, n in zip(out["tokens"], out["units_at"]):
        piece = tok.sp.id_to_piece(tid)
        if piece.startswith("\u2581") or not words:
            words.append([piece.lstrip("\u2581"), round(end_of(prev), 2), round(end_of(n), 2)])
        else:
            words[-1][0] += piece
            words[-1][2] = round(end_of(n), 2)
        prev = n
    n = int(start * audio.SAMPLE_RATE)
    reply = torch.cat([torch.zeros(n), out["wav"].float()])
    user = torch.nn.functional.pad(heard, (0, len(reply) - len(heard)))
    result = dict(text=tok.decode(out["tokens"]), words=words, onset_s=round(onset, 3),
                  rtf=round(seconds / max(len(out["wav"]) / audio.SAMPLE_RATE, 1e-9), 3), units=len(out["units"]))
    audio.save_wav(args.out, torch.stack([reply, user]))
    json_path = os.path.splitext(args.out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    plot_reply(reply, user, words, os.path.splitext(args.out)[0] + ".png")
    print(f"omni: {result['text']!r} ({result['units']} units; first audio {result['onset_s']} s after the question, "
          f"real-time factor {result['rtf']}); wrote {args.out} and {json_path}")


def load_dual(args, out_dir, device):
    from nanosdm import dualstream
    from nanosdm.codec import Codec
    return (Tokenizer.load(os.path.join(out_dir, "tokenizer.model")), Codec.load(os.path.join(out_dir, "codec.pt"), device),
            dualstream.load_model(os.path.join(out_dir, f"{args.model}.pt"), device))


def temps(args):
    return args.temperature, args.top_k, args.audio_temperature, args.audio_top_k


def scenario(args, out_dir, device):
    """One Full-Duplex-Bench-style scenario (nanosdm/eval/duplex.py) through the live loop: its stereo wav,
    a json with the events, where the model spoke and the verdict, and the timeline picture."""
    import json
    from nanosdm.codec import FRAME_S
    from nanosdm.corpus import audio, spokenworld
    from nanosdm.eval import duplex
    data_dir = os.path.join(args.data_root, args.preset)
    world = [e for e in spokenworld.read_jsonl(os.path.join(data_dir, "world.jsonl")) if not e["text_only"]]
    with open(os.path.join(data_dir, "corpus.json")) as f:
        voices = json.load(f)["unseen_voices"]
    tok, codec, model = load_dual(args, out_dir, device)
    sc = duplex.scenario(args.scenario, args.seed, world, voices)
    out = duplex.run_scenario(model, codec, tok, sc, temps(args), live.load_ear(model, out_dir, device))
    verdict = duplex.score(sc["kind"], sc["events"], out["said"], sc["answer"])
    result = dict(kind=sc["kind"], question=sc["question"], answer=sc["answer"], voice=sc["voice"],
                  events=sc["events"], scripted_s=round(sc["script_s"], 3), said=out["said"], voiced=out["voiced"],
                  verdict=verdict, verdict_vad=duplex.score(sc["kind"], sc["events"], out["voiced"], sc["answer"]),
                  rtf=round(out["seconds"]["total"] / (out["frames"] * FRAME_S), 3))
    base = os.path.splitext(args.out)[0] if args.out != "reply.wav" else f"scenario_{sc['kind']}"
    user = torch.nn.functional.pad(sc["user"], (0, len(out["wav"]) - len(sc["user"])))   # to whole frames
    audio.save_wav(base + ".wav", torch.stack([out["wav"], user]))
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    duplex.plot_timeline(sc, out, base + ".png", ", ".join(f"{k}={v}" for k, v in verdict.items() if k != "stop"))
    print(f"scenario {sc['kind']}: the user ({sc['voice']}) says {sc['question']!r}; events {sc['events']}")
    print(f"model said: {[seg['text'] for seg in out['said']]}; verdict {verdict}")
    print(f"wrote {base}.wav, {base}.json and {base}.png")


def plot_reply(reply, user, words, path):
    """Both channels' spectrograms, the model's inner-monologue words on top of its own."""
    from nanosdm import utils
    from nanosdm.corpus import audio
    fig, axes = utils.figure(2, 1, figsize=(12, 5), sharex=True)
    for ax, x, name in ((axes[0], reply, "model (channel 0)"), (axes[1], user, "user (channel 1)")):
        mel = audio.log_mel(x.float(), n_mels=64)
        ax.imshow(mel.numpy(), origin="lower", aspect="auto", extent=(0, len(x) / audio.SAMPLE_RATE, 0, 64), cmap="magma")
        ax.set_ylabel(name)
    for w, s, e in words:
        axes[0].axvspan(s, e, color="cyan", alpha=0.15)
        axes[0].text(s, 58, w, color="white", fontsize=8)
    axes[1].set_xlabel("seconds")
    axes[0].set_title("a generated reply: the inner monologue over the model's speech")
    utils.save_figure(fig, path)


if __name__ == "__main__":
    main()
