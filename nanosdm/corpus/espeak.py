"""eSpeak NG through ctypes: text -> 16 kHz speech with word and phone timings.

eSpeak NG (GPL-3.0-or-later) is a formant synthesizer: robotic, but hundreds of times faster than
real time on one core, with hundreds of voices, and it reports when each word and phone starts: a
free, perfectly labelled source of speech. We load it at run time and do not redistribute it.

    wav, words, phones = synthesize("Hello, world", voice="en-us+f3")
    words  -> [("hello", 0.012, 0.44), ("world", 0.59, 1.02)]   (word, start_s, end_s)
    phones -> [("h", 0.012, 0.063), ("ə", 0.063, 0.112), ...]   IPA labels, pauses left out

The audio is not bit-exact from run to run (phone durations move by up to ~15 ms); the words
and the phone labels are.
"""
import ctypes
import ctypes.util
import functools
import itertools
import multiprocessing
import os
import re
import zlib

import numpy as np
from scipy.signal import firwin, resample_poly

from nanosdm.corpus.audio import SAMPLE_RATE

NATIVE_RATE = 22050  # what espeak_Initialize returns; 16000 / 22050 = 320 / 441
UP, DOWN = 320, 441

# eSpeak NG's enums and flags (speak_lib.h)
AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns when done; audio comes through the callback
INIT_PHONEME_EVENTS, INIT_PHONEME_IPA, INIT_DONT_EXIT = 0x1, 0x2, 0x8000
POS_CHARACTER, CHARS_UTF8, ENDPAUSE = 1, 0x1, 0x1000
PHONEMES_IPA = 0x2  # espeak_TextToPhonemes: IPA output; bits 8..23 hold a separator character
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_PHONEME = 0, 1, 7  # also 2 SENTENCE, 5 END, 8 SAMPLERATE
PARAM_RATE, PARAM_PITCH, PARAM_WORDGAP = 1, 3, 7
EE_OK = 0

RATE_RANGE, PITCH_RANGE = (80, 450), (0, 100)  # words per minute; eSpeak's 0..100 pitch scale
SONIC_RATE = 450  # from here eSpeak speeds up with libsonic and its event times are garbage
BUFFER_MS = 1000  # audio per callback: fewer, bigger calls into Python
MIN_CLOSURE = 66  # 3 ms at 22.05 kHz: a run of exact zeros this long is a stop's closure
SWALLOWED = 882  # 40 ms: the length given to a phone that eSpeak hid inside the one before
STOPS = set("pbtdkɡgʔ")  # first character of a stop's IPA label (tʃ and dʒ too)
EXCLUDED_BASES = {"en-shaw"}  # the Shavian-alphabet voice reads Latin text exactly like "en"
EXCLUDED_VARIANTS = {"fast"}  # an unstable speed test: its event times are garbage too


class Event(ctypes.Structure):  # espeak_EVENT: natural alignment puts user_data at offset 24
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p),
                ("id", ctypes.c_char * 8)]  # union {int number; char *name; char string[8]}


class Voice(ctypes.Structure):  # espeak_VOICE, for espeak_ListVoices
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p),
                ("identifier", ctypes.c_char_p), ("gender", ctypes.c_ubyte),
                ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte), ("xx1", ctypes.c_ubyte),
                ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


# The library has one global state per process, so this module does too.
_state = {"lib": None, "chunks": [], "events": [], "voice": None}


def _on_synth(wav, n, events):
    """Called by eSpeak for each buffer of audio: keep the samples and the events."""
    if n > 0:
        _state["chunks"].append(ctypes.string_at(wav, 2 * n))  # n int16 samples
    i = 0
    while events[i].type != EVENT_LIST_TERMINATED:
        e = events[i]
        label = e.id.decode("utf-8", "replace") if e.type == EVENT_PHONEME else ""  # <= 8 bytes
        _state["events"].append((e.type, e.text_position, e.sample, label))
        i += 1
    return 0


_callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(Event))(_on_synth)  # module-level: never collected


def _load_library():
    """The wheel's library and data if it has a build for this platform, else a system install
    (which knows its own data path). Returns (CDLL, data path or None)."""
    candidates = []
    try:
        import espeakng_loader
        candidates.append((espeakng_loader.get_library_path(), espeakng_loader.get_data_path()))
    except (ImportError, RuntimeError):
        pass
    candidates.append((ctypes.util.find_library("espeak-ng"), None))
    for path, data in candidates:
        try:
            if path:  # CDLL(None) would give this very process
                return ctypes.CDLL(path), data
        except OSError:
            pass
    raise RuntimeError("eSpeak NG not found: `pip install espeakng-loader` "
                       "(or `apt-get install libespeak-ng1`)")


def _lib():
    """Load and initialise eSpeak NG once per process."""
    if _state["lib"] is None:
        lib, data = _load_library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(Voice)]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(Voice))
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                              ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        if hasattr(lib, "espeak_ng_SetRandSeed"):
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        options = INIT_PHONEME_EVENTS | INIT_PHONEME_IPA | INIT_DONT_EXIT  # no exit() on errors
        data = data and data.encode()
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data, options)
        if rate != NATIVE_RATE:
            raise RuntimeError(f"eSpeak NG failed to initialise {lib._name} (returned {rate})")
        lib.espeak_SetSynthCallback(_callback)
        _state["lib"] = lib
    return _state["lib"]


@functools.lru_cache(maxsize=None)
def _voice_parts():
    """English base voices and variants: ("en", "en-029", ..., "en-us-nyc"), ("Alex", ..., "m7")."""
    def identifiers(spec):  # file names such as "gmw/en-US" or "!v/f3", with the first language
        found, i, out = _lib().espeak_ListVoices(spec), 0, []
        while found[i]:
            out.append((found[i].contents.identifier.decode().split("/")[-1],
                        found[i].contents.languages[1:]))  # languages: a priority byte first
            i += 1
        return out
    bases = {name.lower() for name, lang in identifiers(None) if lang.startswith(b"en")}
    variants = {name for name, _ in identifiers(ctypes.byref(Voice(languages=b"variant")))}
    variants = {v for v in variants if " " not in v}  # "Mr serious" would make a poor name
    return tuple(sorted(bases - EXCLUDED_BASES)), tuple(sorted(variants - EXCLUDED_VARIANTS))


@functools.lru_cache(maxsize=None)
def _loadable_voices():
    bases, variants = _voice_parts()
    names = [n for b in bases for n in [b] + [f"{b}+{v}" for v in variants]]
    loadable = tuple(n for n in names if _lib().espeak_SetVoiceByName(n.encode()) == EE_OK)
    _state["voice"] = None  # we just changed eSpeak's current voice
    return loadable


def voices():
    """Every English voice with every variant ("en-us", "en-us+f3", "en+klatt2", ...) that loads."""
    return list(_loadable_voices())


def _set_voice(voice):
    if voice == _state["voice"]:
        return
    base, _, variant = voice.partition("+")
    bases, variants = _voice_parts()
    # eSpeak silently accepts any variant name, so check it against the list ourselves
    if base not in bases or (variant and variant not in variants) \
            or _lib().espeak_SetVoiceByName(voice.encode()) != EE_OK:
        raise ValueError(f"unknown voice {voice!r}: see espeak.voices(), e.g. 'en-us', 'en-us+f3'")
    _state["voice"] = voice


WORD_RE = re.compile(r"\S*\w\S*")  # a whitespace-separated token with a letter or digit in it


def _normalise(token):
    """Lower case, no punctuation; apostrophes and hyphens inside a word stay (don't, e-mail)."""
    return re.sub(r"[^\w'-]|_", "", token.lower()).strip("'-")


def _closures(raw):
    """{end: start} of every run of at least MIN_CLOSURE exact zeros in the native audio."""
    zero = np.concatenate([[False], raw == 0, [False]])
    edges = np.flatnonzero(zero[1:] != zero[:-1])  # runs are [edges[0], edges[1]), [edges[2], ...
    starts, ends = edges[0::2], edges[1::2]
    long_enough = ends - starts >= MIN_CLOSURE
    return dict(zip(ends[long_enough].tolist(), starts[long_enough].tolist()))


def _spoken_words(events, n_samples, closures):
    """Phones grouped by WORD event: [(text position, [[label, start, end], ...]), ...] in native
    samples. A phone ends where the next event starts, so a word's last phone ends at the next
    word, at a pause (empty label) or at the end: "Hello," does not swallow the comma's pause."""
    starts = [sample for _, _, sample, _ in events] + [n_samples]
    for i, (kind, _, sample, label) in enumerate(events):
        if kind == EVENT_PHONEME and label[:1] in STOPS and sample in closures:
            # The event marks the burst; the closure before it (exact zeros) belongs to the stop,
            # but not what lies before the previous event (a pause, or the previous word).
            starts[i] = max(closures[sample], events[i - 1][2] if i else 0)
    spoken = []
    for i, (kind, pos, _, label) in enumerate(events):
        if kind == EVENT_WORD or (kind == EVENT_PHONEME and label and not spoken):
            spoken.append((pos, []))
        if kind != EVENT_PHONEME or not label:
            continue
        start, end, phones = starts[i], starts[i + 1], spoken[-1][1]
        if end == start:  # eSpeak sometimes stamps a sonorant (l m n ŋ) with the next event's time
            j = i + 1
            while j < len(events) and events[j][0] == EVENT_WORD:
                j += 1
            if j < len(events) and events[j][0] == EVENT_PHONEME and events[j][3]:
                end = starts[j]  # "ball is": the "l" is heard between the WORD event and the "ɪ"
        if end == start and phones and phones[-1][2] == start:
            # "world", "shelf": the "l" was rendered at the end of the vowel before it
            prev = phones[-1]
            start = prev[2] = prev[2] - min(SWALLOWED, (prev[2] - prev[1]) // 2)
        phones.append([label, start, end])
    return spoken


def _phone_count(word):
    """How many phones eSpeak gives word on its own (espeak_TextToPhonemes, "_" between phones)."""
    text = ctypes.c_char_p(word.encode("utf-8"))
    out = _lib().espeak_TextToPhonemes(ctypes.byref(text), CHARS_UTF8, PHONEMES_IPA | ord("_") << 8)
    return len((out or b"").replace(b" ", b"_").split(b"_"))


def _token_phones(tokens, spoken):
    """The phones of each text token, from the spoken words mapped onto it."""
    mine, k = [[] for _ in tokens], 0
    for pos, phones in spoken:
        # Positions are 1-based characters and can point at punctuation before the word
        # ("hello -- world"): take the first token that ends after it. Numbers are several
        # spoken words ("1999" -> nineteen hundred ninety nine): they share one token.
        while k < len(tokens) - 1 and tokens[k][1] <= pos - 1:
            k += 1
        mine[k] += phones
    k = 0
    while k < len(tokens):
        # eSpeak says some phrases as one word ("in the", "live in", "a while"): share its phones
        # among the tokens in proportion to the number each has on its own.
        m = k + 1
        while m < len(tokens) and not mine[m]:
            m += 1
        if m > k + 1 and mine[k]:
            counts = np.cumsum([_phone_count(t[2]) for t in tokens[k:m]])
            cuts = [0] + np.rint(counts / counts[-1] * len(mine[k])).astype(int).tolist()
            mine[k:m] = [mine[k][a:b] for a, b in zip(cuts, cuts[1:])]
        k = m
    return mine


def _seconds(sample):
    """A native sample index -> seconds, on the 16 kHz sample grid."""
    return round(sample * UP / DOWN) / SAMPLE_RATE


@functools.lru_cache(maxsize=None)
def _resample_filter():
    """resample_poly's own default low-pass filter, designed once instead of on every call."""
    return firwin(2 * 10 * DOWN + 1, 1 / DOWN, window=("kaiser", 5.0)).astype(np.float32)


def synthesize(text, voice="en-us", rate=175, pitch=50, word_gap=0):
    """Speak text. Returns (wav float32 16 kHz mono in [-1, 1], [(word, start_s, end_s), ...],
    [(ipa_phone, start_s, end_s), ...]), one word per word of the text: lower case, no punctuation.
    rate: words per minute; pitch: 0..100; word_gap: extra pause between words, in 10 ms."""
    tokens = [(m.start(), m.end(), _normalise(m.group())) for m in WORD_RE.finditer(text or "")]
    tokens = [t for t in tokens if t[2]]
    if not tokens:
        raise ValueError(f"nothing to say in text {text!r}")
    if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
        raise ValueError(f"rate {rate} outside {RATE_RANGE} (words per minute)")
    if not PITCH_RANGE[0] <= pitch <= PITCH_RANGE[1]:
        raise ValueError(f"pitch {pitch} outside {PITCH_RANGE}")
    if word_gap < 0:
        raise ValueError(f"word_gap {word_gap} must be >= 0 (units of 10 ms)")
    lib = _lib()
    _set_voice(voice)
    lib.espeak_SetParameter(PARAM_RATE, int(min(rate, SONIC_RATE - 1)), 0)
    lib.espeak_SetParameter(PARAM_PITCH, int(pitch), 0)
    lib.espeak_SetParameter(PARAM_WORDGAP, int(word_gap), 0)
    _state["chunks"].clear(), _state["events"].clear()
    data = text.encode("utf-8")
    # eSpeak's breath noise comes from its own generator, seeded from the clock: seeded here from the
    # call, the same call gives the same audio (in a process with the same history: see synthesize_many)
    if hasattr(lib, "espeak_ng_SetRandSeed"):     # eSpeak NG >= 1.51
        lib.espeak_ng_SetRandSeed(zlib.crc32(b"%s|%d|%d|%d|" % (voice.encode(), rate, pitch, word_gap) + data))
    lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8 | ENDPAUSE, None, None)
    raw = np.frombuffer(b"".join(_state["chunks"]) or bytes(2), np.int16)

    spoken = _spoken_words(_state["events"], len(raw), _closures(raw))
    wav = resample_poly(raw.astype(np.float32) / 32768, UP, DOWN, window=_resample_filter())
    np.clip(wav, -1.0, 1.0, out=wav)  # the resampling filter can overshoot a full-scale peak
    words, last = [], 0.0  # a token with no phones gets an empty span where it would have been
    for (_, _, word), phones in zip(tokens, _token_phones(tokens, spoken)):
        start, last = (_seconds(phones[0][1]), _seconds(phones[-1][2])) if phones else (last, last)
        words.append((word, start, last))
    phones = [(label, _seconds(s), _seconds(e)) for _, ps in spoken for label, s, e in ps]
    return wav, words, phones


def _synthesize_job(job):
    return synthesize(**job)


def synthesize_many(jobs, processes=None, chunksize=256):
    """synthesize(**job) for each job dict, yielded in order, from a pool of processes (eSpeak
    has global state, so threads would not help). Jobs are read lazily and at most two windows
    of results wait in memory, so a generator of a million jobs is fine."""
    processes = processes or os.cpu_count() or 1
    jobs = iter(jobs)
    if processes == 1:
        yield from map(_synthesize_job, jobs)
        return
    window = processes * chunksize * 2
    # a fresh worker for each chunk: eSpeak's timing depends on what its process spoke before, so a
    # long-lived worker's history (whichever chunks it happened to take first) would change the audio.
    # Chunks of 256 keep the forks cheap: forking train.py's 3 GB process costs far more than a small
    # one (3,000 short turns from a 2.5 GB parent: 24 s in chunks of 32, 12 s in chunks of 256)
    with multiprocessing.Pool(processes, maxtasksperchild=1) as pool:
        running = None
        while batch := list(itertools.islice(jobs, window)):
            submitted = pool.imap(_synthesize_job, batch, chunksize)  # starts on this batch now
            if running is not None:
                yield from running  # while the pool works on the next batch
            running = submitted
        if running is not None:
            yield from running
