"""eSpeak NG binding: words, phones and audio line up. The audio is not bit-exact from run to
run, so these tests compare timings with tolerances and texts and phone labels exactly."""
import itertools
import random
import re

import numpy as np
import scipy.signal
import pytest

from nanosdm.corpus import espeak

SR = espeak.SAMPLE_RATE
TOL = 0.010  # seconds
RUN_TOL = 0.030  # eSpeak's phone durations vary by up to ~15 ms from one run to the next
TEXTS = [
    "Hello, world. How are you today?",
    "The red ball is in the kitchen, near the big black table.",
    "Stop! Don't touch that, it's hot.",
    "Peter picked a peck of pickled peppers.",
]


def rms(wav, start, end):
    seg = wav[int(round(start * SR)):int(round(end * SR))]
    return float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if len(seg) else 0.0


def text_words(text):
    return [w.strip("'") for w in re.findall(r"[a-z0-9']+", text.lower())]


def f0(wav, start, end):
    """Fundamental frequency of a vowel by autocorrelation, searched between 60 and 320 Hz."""
    # low-pass first: a formant near 240 Hz otherwise wins the autocorrelation over a 75 Hz f0
    low = scipy.signal.sosfiltfilt(scipy.signal.butter(4, 320, fs=SR, output="sos"), wav.astype(np.float64))
    x = low[int(start * SR):int(end * SR)]
    x -= x.mean()
    ac = np.correlate(x, x, "full")[len(x) - 1:]
    lo, hi = SR // 320, SR // 60
    return SR / (lo + int(np.argmax(ac[lo:hi])))


@pytest.fixture(scope="module")
def results():
    return {t: espeak.synthesize(t) for t in TEXTS}


def test_audio_format(results):
    for wav, _, _ in results.values():
        assert wav.dtype == np.float32 and wav.ndim == 1
        assert 0.05 < np.abs(wav).max() <= 1.0
        assert 0.5 * SR < len(wav) < 6 * SR


def test_words_match_text_and_are_ordered(results):
    for text, (wav, words, _) in results.items():
        assert [w for w, _, _ in words] == text_words(text)
        duration = len(wav) / SR
        for (_, s, e), (_, s2, _) in zip(words, words[1:] + [("", duration, duration)]):
            assert 0 <= s < e <= s2 <= duration  # ordered, non-empty, non-overlapping, inside
            assert 0.04 < e - s < 1.5


def test_phones_inside_their_words(results):
    for wav, words, phones in results.values():
        duration = len(wav) / SR
        assert all(label for label, _, _ in phones)  # pauses are not phones
        starts = [s for _, s, _ in phones]
        assert starts == sorted(starts)
        for (_, s, e), (_, s2, _) in zip(phones, phones[1:]):
            assert 0 <= s < e <= s2 + 1e-9 and e <= duration  # no zero-length phones either
        for label, s, e in phones:  # every phone lies in exactly one word
            owners = [w for w, ws, we in words if ws - TOL <= s and e <= we + TOL]
            assert len(owners) == 1, (label, s, e)
        for _, ws, we in words:  # and every word is covered by its phones
            mine = [(s, e) for _, s, e in phones if ws - TOL <= s and e <= we + TOL]
            assert mine and abs(mine[0][0] - ws) < TOL and abs(mine[-1][1] - we) < TOL


def test_phones_are_deterministic():
    _, _, p1 = espeak.synthesize("kitchen")
    _, _, p2 = espeak.synthesize("kitchen")
    assert [p for p, _, _ in p1] == [p for p, _, _ in p2] == ["k", "ˈɪ", "tʃ", "ə", "n"]
    for (_, s1, e1), (_, s2, e2) in zip(p1, p2):
        assert abs(s1 - s2) < RUN_TOL and abs(e1 - e2) < RUN_TOL


def test_speech_inside_words_and_silence_in_the_pause():
    wav, words, _ = espeak.synthesize("Hello, world.")
    (w1, s1, e1), (w2, s2, e2) = words
    assert (w1, w2) == ("hello", "world")
    assert s2 - e1 > 0.1  # the comma's pause is not swallowed by "hello"
    assert rms(wav, e1 + 0.005, s2 - 0.005) < 1e-3
    assert rms(wav, s1, e1) > 0.02 and rms(wav, s2, e2) > 0.02


def test_stop_closure_moved_into_the_stop():
    # eSpeak stamps a stop at its burst; the silent closure before it must belong to the stop.
    wav, _, phones = espeak.synthesize("a happy cat sat on a top step")
    stops = [(i, s, e) for i, (p, s, e) in enumerate(phones) if p in ("p", "t", "k") and i > 0]
    assert len(stops) >= 5
    for i, s, e in stops:
        assert e - s > 0.03  # closure + burst, not just the burst
        assert rms(wav, s + 0.002, s + 0.015) < 0.1 * rms(wav, phones[i - 1][1], phones[i - 1][2])


def test_sonorants_not_lost():
    # eSpeak gives some word-final "l"s the time of the next event; they still get a duration.
    _, words, phones = espeak.synthesize("the world is a small ball in a shelf")
    ls = [(s, e) for p, s, e in phones if p == "l"]
    assert len(ls) == 4 and all(e - s >= 0.015 for s, e in ls)
    assert [w for w, _, _ in words] == "the world is a small ball in a shelf".split()


def test_digits_and_punctuation_do_not_crash():
    _, words, phones = espeak.synthesize("I have 7 cats -- and 12 dogs & a bird!")
    assert [w for w, _, _ in words] == ["i", "have", "7", "cats", "and", "12", "dogs", "a", "bird"]
    assert len(phones) > 20


def test_rate_and_word_gap():
    slow, w_slow, _ = espeak.synthesize("one two three four", rate=100)
    fast, w_fast, _ = espeak.synthesize("one two three four", rate=300)
    assert len(slow) > 2 * len(fast)
    gaps = lambda ws: [b[1] - a[2] for a, b in zip(ws, ws[1:])]
    _, w_gap, _ = espeak.synthesize("one two three four", word_gap=20)  # 20 x 10 ms
    assert all(g > 0.15 for g in gaps(w_gap)) and all(g < 0.05 for g in gaps(w_slow))


def test_voices_and_pitches_differ():
    def vowel_f0(**kwargs):
        wav, _, phones = espeak.synthesize("father", **kwargs)
        (s, e), = [(s, e) for p, s, e in phones if p == "ˈɑː"]
        return f0(wav, s, e)
    assert vowel_f0(pitch=80) > 1.3 * vowel_f0(pitch=20)
    assert vowel_f0(voice="en-us+f3") > 1.5 * vowel_f0(voice="en-us+m3")


def test_voices_all_load():
    names = espeak.voices()
    assert len(names) > 100 and len(set(names)) == len(names)
    assert {"en-us", "en", "en-us+f3", "en-us+m7", "en+klatt2"} <= set(names)
    assert all(n.split("+")[0].startswith("en") for n in names)
    for name in random.Random(0).sample(names, 6) + ["en-gb-x-rp", "en-us+whisper"]:
        wav, words, phones = espeak.synthesize("The cat sat on the mat.", voice=name)
        assert len(words) == 6 and len(phones) >= 12 and np.abs(wav).max() > 0.01, name


def test_synthesize_many_in_order():
    jobs = [{"text": t, "voice": v} for t in TEXTS for v in ("en-us", "en-us+f3")]
    parallel = list(espeak.synthesize_many(iter(jobs), processes=2, chunksize=1))
    assert len(parallel) == len(jobs)
    for job, (wav, words, phones) in zip(jobs, parallel):
        ref_wav, ref_words, ref_phones = espeak.synthesize(**job)
        assert [w for w, _, _ in words] == [w for w, _, _ in ref_words]
        assert [p for p, _, _ in phones] == [p for p, _, _ in ref_phones]
        assert abs(len(wav) - len(ref_wav)) < 2 * RUN_TOL * SR
        assert all(abs(a[1] - b[1]) < 2 * RUN_TOL for a, b in zip(words, ref_words))


def test_synthesize_many_gives_the_same_audio_twice():
    """eSpeak's timing depends on what its process spoke before, and its breath noise comes from a
    clock-seeded generator: a fresh worker per chunk and a seed per call make a corpus repeat."""
    jobs = [{"text": t, "voice": v, "rate": 165, "pitch": 55} for t in TEXTS for v in ("en-us", "en-us+f3")]
    # two pools of different sizes: which worker renders which chunk, after what, differs between them
    first, second = [list(espeak.synthesize_many(iter(jobs), processes=p, chunksize=2)) for p in (2, 3)]
    for (wav1, words1, _), (wav2, words2, _) in zip(first, second):
        assert len(wav1) == len(wav2) and np.array_equal(wav1, wav2) and words1 == words2


def test_synthesize_many_is_lazy():
    endless = ({"text": f"number {i}"} for i in itertools.count())  # never materialised
    for processes in (1, 2):
        got = list(itertools.islice(espeak.synthesize_many(endless, processes=processes), 3))
        assert [len(words) for _, words, _ in got] == [2, 2, 2]


def test_library_fallback_and_missing(monkeypatch):
    import ctypes.util
    import espeakng_loader
    wheel_lib = espeakng_loader.get_library_path()
    # a wheel without a build for this platform: fall back to a system library, data path None
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: "/nonexistent/libespeak-ng.so")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: wheel_lib)
    lib, data = espeak._load_library()
    assert data is None and hasattr(lib, "espeak_Synth")
    # neither: a clear message that says how to install one
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install espeakng-loader"):
        espeak._load_library()


@pytest.mark.parametrize("kwargs, message", [
    (dict(text=""), "nothing to say"),
    (dict(text=" ?! "), "nothing to say"),
    (dict(text="hi", voice="xx-nowhere"), "xx-nowhere"),
    (dict(text="hi", voice="en-us+nobody"), "en-us\\+nobody"),
    (dict(text="hi", rate=20), "rate 20"),
    (dict(text="hi", rate=451), "rate 451"),
    (dict(text="hi", pitch=101), "pitch 101"),
    (dict(text="hi", pitch=-1), "pitch -1"),
])
def test_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        espeak.synthesize(**kwargs)
