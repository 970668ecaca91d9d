"""
Talk to trained nanosdm checkpoints.

    python sample.py --text "what colour is the kotan?"       # the text LM (stage text) answers
    python sample.py --text "..." --temperature=0 --preset=small
    python sample.py                                          # a text chat: the dialogue so far is the context
    python sample.py --asr FILE.wav                           # the transcript of any wav (stage asr's recognizer)

The defaults sample like Moshi's text stream (temperature 0.7, top-k 25); --temperature=0 is greedy.
"""
import argparse
import os

import torch

from nanosdm import textlm, utils
from nanosdm.tokenizer import EOS, Tokenizer

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--preset", default="tiny")
parser.add_argument("--out_root", default="out")
parser.add_argument("--device", default="auto")
parser.add_argument("--seed", type=int, default=1337)
parser.add_argument("--text", default=None, help="a question for the text LM; without it, a text chat")
parser.add_argument("--temperature", type=float, default=0.7)
parser.add_argument("--top_k", type=int, default=25)
parser.add_argument("--max_new_tokens", type=int, default=40)
parser.add_argument("--asr", default=None, metavar="FILE.wav",
                    help="print the transcript of a wav file (any rate, mono or stereo) and exit")
args = parser.parse_args()


def reply_text(model, tok, turns, device):
    """The assistant's next turn after the dialogue `turns`, sampled with the KV cache, cut at EOS."""
    prompt = tok.encode_prompt(turns)
    room = max(8, model.config["block_size"] - args.max_new_tokens)
    prompt = prompt[-room:]  # a long chat keeps its most recent tokens, leaving room for the answer
    idx = torch.tensor([prompt], device=device)
    new = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k)[0].tolist()
    return tok.decode(new[:new.index(EOS)] if EOS in new else new)


def main():
    torch.manual_seed(args.seed)
    device = utils.get_device(args.device)
    out_dir = os.path.join(args.out_root, args.preset)
    if args.asr is not None:
        from nanosdm import audio
        from nanosdm.asr import ASR
        asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
        try:
            wav = audio.load_wav(args.asr)  # resampled to 16 kHz, channels mixed down
            print(asr.transcribe(wav))
        except audio.AudioError as e:
            raise SystemExit(f"--asr: {e}" if args.asr in str(e) else f"--asr {args.asr}: {e}")
        return
    tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
    model = textlm.load_model(os.path.join(out_dir, "text.pt"), device)
    if args.text is not None:
        print(reply_text(model, tok, [["user", args.text]], device))
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
        answer = reply_text(model, tok, turns, device)
        turns.append(["assistant", answer])
        print(f"lm> {answer}")


if __name__ == "__main__":
    main()
