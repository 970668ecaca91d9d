"""
What stages `align` and `sft` read from the streams of stage `speech` (speech.Streams): a stage's
split, mixed with the user's corpora in their proportions (MixedStreams), and for `sft` a share of
align's user turns that it only listens to (Listening; dualtrain.listen_only masks the rest).
"""
import os

import numpy as np

from nanosdm.corpus import realdata
from nanosdm.corpus.speech import Streams, _weight


class MixedStreams:
    """Several splits' streams (speech.Streams) as one, each drawn in its stated share.
    dualtrain.get_batch picks window starts uniformly over len(self): each part owns a stretch
    of that range in proportion to its weight, and a start in it is scaled onto the part's frames."""

    def __init__(self, parts):
        self.parts = [(w, s) for w, s in parts if w > 0]
        total = sum(len(s) for _, s in self.parts)
        self.spans, self.dialogues, self.starts, at = [], [], {}, 0
        for w, s in self.parts:
            n = max(1, round(w * total))
            self.spans.append((at, n))
            for d in s.dialogues:   # a dialogue's first frame keeps an exact address (dual_start_frac)
                v = at + d["offset"] * n // len(s)
                self.starts[v] = d["offset"]
                self.dialogues.append(dict(d, offset=v))
            at += n
        self.n = at

    def __len__(self):
        return self.n

    def listening(self, start):
        """Whether the window at `start` comes from a part that is only listened to (Listening)."""
        p = next(i for i, (at, n) in enumerate(self.spans) if start < at + n or i == len(self.spans) - 1)
        return getattr(self.parts[p][1], "listen", False)

    def window(self, start, length):
        p = next(i for i, (at, n) in enumerate(self.spans) if start < at + n or i == len(self.spans) - 1)
        at, n = self.spans[p]
        s = self.parts[p][1]
        local = self.starts.get(start, (start - at) * len(s) // n)
        return s.window(min(local, len(s) - length), length)


def mixed_streams(cfg, stage, speech_dir):
    """What stage `align` or `sft` trains on: SpokenWorld's split (align, train) and, under a
    non-default setting, the user's (align_real, real) in the setting's proportions; sft keeps a
    share sft_align_frac of align's single turns among its dialogues. A name that only align says
    (the text-only creatures') is written from its voice 43% of the time after align and 6% after
    an sft that never says it again: the dialogues teach the text stream that only their names occur."""
    streams = _stage_streams(cfg, stage, speech_dir)
    share = cfg.get("sft_align_frac", 0.0) if stage == "sft" else 0.0
    align = Streams(speech_dir, "align")
    if share <= 0 or not Listening.dialogues_of(align):
        if share > 0:
            print(f"{stage}: split align has no dialogue in which only the user speaks: sft_align_frac is not used")
        return streams
    print(f"{stage}: {share:.0%} of its windows from align's single user turns, to listen to")
    return MixedStreams([(1 - share, streams), (share, Listening(align))])


class Listening:
    """The dialogues of a split in which only the user speaks (align's: eight single user turns
    each), as one stream whose windows never leave them. They are there to be listened to: the
    model is silent after every question in them, and dualtrain.listen_only masks what it would
    learn from that (a model that learnt it kept silent after a conversation's first question)."""
    listen = True

    def __init__(self, streams):
        own = self.dialogues_of(streams)
        if not own:
            raise ValueError(f"split {streams.split} has no dialogue in which only the user speaks")
        self.streams, self.real = streams, [(d["offset"], d["frames"]) for d in own]
        self.ends = np.cumsum([n for _, n in self.real])
        self.dialogues = [dict(d, offset=int(e - n)) for d, e, (_, n) in zip(own, self.ends, self.real)]

    @staticmethod
    def dialogues_of(streams):
        return [d for d in streams.dialogues if all(tr["speaker"] == "user" for tr in d["turns"])]

    def __len__(self):
        return int(self.ends[-1])

    def window(self, start, length):
        j = min(int(np.searchsorted(self.ends, start, side="right")), len(self.real) - 1)
        offset, n = self.real[j]
        within = start - int(self.ends[j] - n)
        return self.streams.window(min(offset + min(within, max(0, n - length)), len(self.streams) - length), length)


def _stage_streams(cfg, stage, speech_dir):
    sw_split = "align" if stage == "align" else "train"
    if realdata.is_default(cfg):
        return Streams(speech_dir, sw_split)
    kinds = realdata.KINDS if stage == "align" else realdata.TWO_CHANNEL
    w = _weight(cfg, kinds)
    real_split = "align_real" if stage == "align" else "real"
    bin_path = os.path.join(speech_dir, f"{real_split}_text.bin")
    real = Streams(speech_dir, real_split) if os.path.exists(bin_path) and os.path.getsize(bin_path) else None
    if real is None or len(real) <= cfg["dual_context"] + 1:
        why = ("the setting has no two-channel corpus" if stage == "sft" and not any(
            s["kind"] == "moshi" for s in realdata.parse(cfg["speech_data"])) else f"split {real_split} is missing or too short")
        print(f"{stage}: trains on SpokenWorld's split {sw_split} only: {why}")
        return Streams(speech_dir, sw_split)
    print(f"{stage}: SpokenWorld's {sw_split} {w:.0%}, the user's {real_split} {1 - w:.0%}")
    return real if w == 0 else MixedStreams([(w, Streams(speech_dir, sw_split)), (1 - w, real)])
