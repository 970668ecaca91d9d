"""sample.py --serve: the live page's server (serve.py, websocket.py) and the page itself.

Without a browser: the WebSocket handshake's key (RFC 6455's own example); the monologue's roles
token by token equal speech.read_text_stream's; frames through the server are the offline live
loop's, exactly; bad input (a wrong-sized frame, a bad command, a page gone mid-reply, more pages
than the server holds, a missing checkpoint) leaves the server serving; --model=omni answers a
pushed-to-talk question. In a real browser (headless Chromium, a fake microphone playing an eSpeak
question): frames flow both ways, the user's words land in the user colour, the voice is
scheduled, and the latency and late frames are measured."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch

from nanosdm import judge, live, serve, utils, websocket
from nanosdm.codec import FRAME
from nanosdm.corpus import speech

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)  # sample.py and train.py
from test_dualtrain import make_tiny_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py; the server runs on one thread too


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run in runs/tiny: tokenizer, text LM, codec, sft.pt (stage align, 2 steps: it writes
    garbage, in both roles), and LLaMA-Omni's asr, omni and vocoder (untrained)."""
    from nanosdm import dualtrain, omni
    from nanosdm.asr import ASR
    from nanosdm.vocoder import Vocoder
    root = tmp_path_factory.mktemp("serve")
    cfg = make_tiny_run(root)
    dualtrain.train(dict(cfg, align_max_steps=2), "align")
    out = cfg["out_dir"]
    shutil.copy(os.path.join(out, "align.pt"), os.path.join(out, "sft.pt"))
    torch.manual_seed(0)
    asr = ASR(n_layer=1, n_head=2, d_model=16)
    utils.save_checkpoint(os.path.join(out, "asr.pt"), dict(model=asr.state_dict(), config=asr.config))
    lm = utils.load_checkpoint(os.path.join(out, "text.pt"))
    model = omni.Omni(lm["config"], 16, 3, 32, 10, 4, 1, 2, 16)
    model.lm.load_state_dict(lm["model"])
    utils.save_checkpoint(os.path.join(out, "omni.pt"), dict(model=model.state_dict(), config=model.config))
    voc = Vocoder(n_units=10, latent_dim=8, dim=16, kernel=3, dur_layers=1, frame_layers=1, latent_layers=1)
    utils.save_checkpoint(os.path.join(out, "vocoder.pt"), dict(model=voc.state_dict(), config=voc.config))
    shutil.copytree(out, root / "runs" / "tiny")
    return root


def start(run, *flags):
    """An in-process server on a free port: (server, port); it serves on a daemon thread."""
    import sample
    args = sample.parse_args([f"--out_root={run / 'runs'}", f"--data_root={run / 'data'}", "--serve", "--port=0", *flags])
    app = serve.App(args, str(run / "runs" / "tiny"), "cpu")
    server = serve.make_server(app, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture
def server(run):
    srv, port = start(run)
    yield srv, port
    srv.shutdown()
    srv.server_close()
    assert srv.app.errors == []                       # nothing a test sent raised in the server


def receive_json(conn):
    kind, data = conn.receive()
    assert kind == websocket.TEXT, data
    return json.loads(data)


def receive_frame(conn):
    kind, data = conn.receive()
    assert kind == websocket.BINARY, data
    n = int.from_bytes(data[:4], "little")
    return json.loads(data[4:4 + n]), np.frombuffer(data[4 + n:], "<f4")


def vanish(conn):
    """The page goes away without a closing handshake (a tab closed, a crash)."""
    import socket
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.sock.close()


def as_bytes(x):
    return np.asarray(x, "<f4").tobytes()


# -----------------------------------------------------------------------------
# the parts

def test_accept_key_is_the_rfcs_example():
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="   # RFC 6455 §1.3


def test_monologue_roles_equal_read_text_stream():
    from nanosdm.tokenizer import ASSISTANT, EOS, USER
    g = np.random.default_rng(0)
    for _ in range(20):      # streams dense with markers, EOS and nested turns
        ids = g.choice([USER, ASSISTANT, EOS, 1, 2, 10, 11, 12], size=60).tolist()
        mono = serve.Monologue()
        got = {}
        for f, i in enumerate(ids):
            role, _, word = mono.add(i)
            if word:
                got.setdefault(role, []).append((f, i))
        want = {}
        for tr in speech.read_text_stream(ids):
            want.setdefault(serve.ROLES[tr["role"]], []).extend(tr["tokens"])
        assert {r: sorted(v) for r, v in got.items()} == {r: sorted(v) for r, v in want.items() if v}


# -----------------------------------------------------------------------------
# the server, with a plain WebSocket client

def test_frames_through_the_server_are_the_live_loop(server, run):
    srv, port = server
    app = srv.app
    wav = (0.3 * torch.randn(12 * FRAME, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)   # as a page sends
    conn = websocket.connect("127.0.0.1", port)
    hello = receive_json(conn)
    assert hello["mode"] == "duplex" and hello["frame"] == FRAME and hello["delay_frames"] == 1
    torch.manual_seed(5)
    got = []
    for t in range(12):                # one at a time: the sampling draws in the same order as offline
        conn.send(as_bytes(wav[t * FRAME:(t + 1) * FRAME]))
        got.append(receive_frame(conn))
    conn.close()
    torch.manual_seed(5)
    want = live.live(app.model, app.codec, wav)
    assert [h["t"] for h, _ in got] == list(range(12))
    assert [h["id"] for h, _ in got] == want["text"]
    assert [len(w) for _, w in got] == [0] + [FRAME] * 11          # frame t - 1's voice comes with step t
    voice = np.concatenate([w for _, w in got])
    assert np.allclose(voice, want["wav"][:11 * FRAME].numpy(), atol=1e-6)
    assert [h["model_code"] for h, _ in got[1:]] == want["codes"][:11, 0].tolist()
    assert all(h["step_ms"] > 0 and h["cpu_ms"] >= 0 for h, _ in got)


def test_bad_frames_and_commands_are_answered_not_fatal(server):
    srv, port = server
    conn = websocket.connect("127.0.0.1", port)
    receive_json(conn)
    conn.send(b"\0" * 100)                                          # 25 samples, not 1280
    err = receive_json(conn)
    assert err["type"] == "error" and "1280" in err["message"] and "100 bytes" in err["message"]
    conn.send("{not json")
    assert "unknown command" in receive_json(conn)["message"]
    conn.send(as_bytes(np.full(FRAME, np.nan)))                    # NaNs are silence, not a poisoned cache
    h, _ = receive_frame(conn)
    assert h["t"] == 0                                              # the bad frame did not count
    conn.send(as_bytes(np.zeros(FRAME)))
    h, w = receive_frame(conn)
    assert h["t"] == 1 and np.isfinite(w).all()
    conn.send(json.dumps({"type": "reset"}))
    assert receive_json(conn)["type"] == "reset"
    conn.send(as_bytes(np.zeros(FRAME)))
    assert receive_frame(conn)[0]["t"] == 0                         # a new conversation
    conn.close()


def close_code(conn):
    """Read until the server's close frame; its status code."""
    while True:
        fin, opcode, payload = conn._frame()
        if opcode == websocket.CLOSE:
            return int.from_bytes(payload[:2], "big")


def test_broken_websocket_frames_close_only_their_connection(server):
    srv, port = server
    for send, code in [(lambda c: c.send(b"\xff\xfe", websocket.TEXT), websocket.INVALID_DATA),   # not UTF-8
                       (lambda c: setattr(c, "is_client", False) or c.send(b""), websocket.PROTOCOL_ERROR),   # unmasked
                       (lambda c: c.sock.sendall(bytes([0x82, 0x80 | 127]) + (websocket.MAX_MESSAGE + 1).to_bytes(8, "big")
                                                 + b"mask"), websocket.TOO_BIG)]:    # a header claiming 1 MiB + 1
        conn = websocket.connect("127.0.0.1", port)
        receive_json(conn)
        send(conn)
        conn.is_client = True
        assert close_code(conn) == code
    conn = websocket.connect("127.0.0.1", port)                    # and the server goes on
    receive_json(conn)
    conn.send(as_bytes(np.zeros(FRAME)))
    assert receive_frame(conn)[0]["t"] == 0
    conn.close()


def test_a_page_gone_mid_reply_and_too_many_pages(server):
    srv, port = server
    app = srv.app
    gone = websocket.connect("127.0.0.1", port)
    for _ in range(30):                                             # replies pile up unread ...
        gone.send(as_bytes(np.zeros(FRAME)))
    vanish(gone)                                                    # ... and the page vanishes, no close frame
    a, b = websocket.connect("127.0.0.1", port), websocket.connect("127.0.0.1", port)
    for c in (a, b):
        receive_json(c)
    for t in range(3):                                              # two pages, two conversations
        for c in (a, b):
            c.send(as_bytes(np.zeros(FRAME)))
        assert receive_frame(a)[0]["t"] == t and receive_frame(b)[0]["t"] == t
    deadline = time.time() + 10
    while app.active > 2 and time.time() < deadline:                # the vanished page's thread ends
        time.sleep(0.05)
    assert app.active == 2
    app.max_sessions = 2
    third = websocket.connect("127.0.0.1", port)
    msg = receive_json(third)
    assert msg["type"] == "error" and msg["message"].startswith("busy")
    with pytest.raises(websocket.Closed):
        third.receive()                                             # and the server closes it
    a.close()
    b.close()
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/").status == 200    # still serving


def test_files_and_the_question(server):
    _, port = server
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/").read().decode()
    assert 'id="monologue"' in page and "page.js" in page
    assert b"registerProcessor" in urllib.request.urlopen(f"http://127.0.0.1:{port}/capture.js").read()
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/../sample.py")
    pytest.importorskip("espeakng_loader")
    r = urllib.request.urlopen(f"http://127.0.0.1:{port}/question")
    wav = np.frombuffer(r.read(), "<f4")
    assert r.headers["X-Question"].endswith("?") and r.headers["X-Voice"]
    assert 0.5 < len(wav) / 16000 < 6 and 0.55 < np.abs(wav).max() <= 0.6 + 1e-6


def test_a_missing_checkpoint_is_one_line(run, tmp_path):
    import sample
    (tmp_path / "tiny").mkdir()
    shutil.copy(run / "runs" / "tiny" / "tokenizer.model", tmp_path / "tiny")
    shutil.copy(run / "runs" / "tiny" / "codec.pt", tmp_path / "tiny")
    with pytest.raises(SystemExit, match="checkpoint not found: " + str(tmp_path / "tiny" / "dpo.pt")):
        sample.main([f"--out_root={tmp_path}", "--device=cpu", "--serve", "--port=0", "--model=dpo"])


def test_omni_answers_a_pushed_question(run):
    srv, port = start(run, "--model=omni", "--max_new_tokens=6")
    conn = websocket.connect("127.0.0.1", port)
    assert receive_json(conn)["mode"] == "omni"
    conn.send(json.dumps({"type": "end"}))                         # nothing said yet
    assert "no question" in receive_json(conn)["message"]
    t = np.arange(15 * FRAME) / 16000
    q = 0.3 * np.sin(2 * np.pi * 200 * t)
    for f in range(15):
        conn.send(as_bytes(q[f * FRAME:(f + 1) * FRAME]))
    conn.send(json.dumps({"type": "end"}))
    frames = []                                                     # the voice as it is spoken, then the words
    while True:
        kind, data = conn.receive()
        if kind == websocket.TEXT:
            msg = json.loads(data)
            break
        n = int.from_bytes(data[:4], "little")
        frames.append((json.loads(data[4:4 + n]), np.frombuffer(data[4 + n:], "<f4")))
    assert msg["type"] == "omni" and 1 <= len(msg["pieces"]) <= 6 and msg["compute_ms"] > 0
    assert msg["frames"] == len(frames) >= 1 and msg["first_audio_ms"] <= msg["compute_ms"]
    assert [h["t"] for h, _ in frames] == list(range(msg["frames"])) and all(len(w) == FRAME for _, w in frames)
    for f in range(int(120 / 0.08)):                                # two minutes: more than the LM's block holds
        conn.send(as_bytes(np.zeros(FRAME)))
    conn.send(json.dumps({"type": "end"}))
    assert "too long a question (120.0 s)" in receive_json(conn)["message"]
    for f in range(15):                                             # a second question, and the page leaves
        conn.send(as_bytes(q[f * FRAME:(f + 1) * FRAME]))           # while the server is answering it
    conn.send(json.dumps({"type": "end"}))
    vanish(conn)
    deadline = time.time() + 10
    while srv.app.active and time.time() < deadline:               # it answered into a closed socket, and ended
        time.sleep(0.05)
    assert srv.app.active == 0
    srv.shutdown()
    srv.server_close()
    assert srv.app.errors == []


# -----------------------------------------------------------------------------
# the page, in a real browser

SECONDS = float(os.environ.get("NANOSDM_SERVE_SECONDS", 20))   # the conversation's length
PRESET_SIZED = os.environ.get("NANOSDM_SERVE_PRESET") == "tiny"   # time the tiny preset's sizes (see preset_sized)
QUESTION = "what colour is the kotan?"
USER_COLOUR, ASSISTANT_COLOUR = "rgb(194, 84, 0)", "rgb(31, 95, 191)"   # index.html's .user, .assistant


def browser(tmp_path, mic_wav):
    """Headless Chromium driven by chromedriver (selenium), its microphone playing mic_wav."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("no selenium: pip install -r requirements-serve.txt")
    if not chromium or not driver_path:
        pytest.skip("no browser: apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic_wav}",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1000,820"]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def preset_sized(run, root):
    """Untrained models at the tiny preset's sizes (train.py's defaults: text LM 4 x 128, codec 4 x 256
    codes, depth 2 x 128, context 256) with the fixture's tokenizer (100 pieces, not 1024: only the
    text head is smaller). A frame costs what it costs the preset; what it says is noise."""
    import train
    from nanosdm import dualtrain, textlm
    from nanosdm.codec import Codec
    from nanosdm.tokenizer import Tokenizer
    out = root / "runs" / "tiny"
    out.mkdir(parents=True)
    shutil.copy(run / "runs" / "tiny" / "tokenizer.model", out)
    cfg = dict(train.parse_config([]), out_dir=str(out))
    torch.manual_seed(0)
    lm = textlm.TextLM(Tokenizer.load(str(out / "tokenizer.model")).vocab_size, cfg["text_n_layer"], cfg["text_n_head"],
                       cfg["text_d_model"], cfg["text_block_size"])
    utils.save_checkpoint(str(out / "text.pt"), dict(model=lm.state_dict(), config=lm.config))
    codec = Codec(*(cfg[f"codec_{k}"] for k in ("dim", "sub_dim", "enc_layers", "dec_layers", "sub_layers", "kernel",
                                                "latent_dim", "n_q", "codebook_size")))
    utils.save_checkpoint(str(out / "codec.pt"), dict(model=codec.state_dict(), config=codec.config))
    model = dualtrain.build_model(cfg)
    utils.save_checkpoint(str(out / "sft.pt"), dict(model=model.state_dict(), config=model.config))
    return root


@contextlib.contextmanager
def page(run, tmp_path, mic_wav, *flags):
    """`python sample.py --serve` on a free port, and the browser on its page."""
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), f"--out_root={run / 'runs'}",
                               f"--data_root={run / 'data'}", "--device=cpu", "--serve", "--port=0", "--seed=1", *flags],
                              stdout=subprocess.PIPE, stderr=open(tmp_path / "server.log", "w"), text=True, cwd=tmp_path)
    driver = None
    try:
        line = server.stdout.readline()                       # "serving sft (tiny) on http://localhost:PORT/ ..."
        assert "http://localhost:" in line, line + (tmp_path / "server.log").read_text()
        driver = browser(tmp_path, mic_wav)
        driver.get(line.split()[4])
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(10)


def wait_for(driver, condition, timeout=20):
    deadline = time.time() + timeout
    while not driver.execute_script(f"return {condition}"):
        assert time.time() < deadline, f"waited {timeout} s for {condition}"
        time.sleep(0.1)


MONOLOGUE_JS = ("[...document.querySelectorAll('#monologue > div')]"
                ".map(d => [d.className, d.textContent, getComputedStyle(d).color])")


def monologue(driver):
    """The monologue's turns as the page shows them: [class, text, colour]."""
    return driver.execute_script("return " + MONOLOGUE_JS)


def test_the_page_in_a_browser(run, tmp_path):
    """The fake microphone asks a question; over SECONDS of conversation the page must send every
    frame and get each back, schedule the model's voice without gaps, and show the monologue."""
    pytest.importorskip("espeakng_loader")
    from nanosdm.corpus import audio, espeak
    from nanosdm.tokenizer import Tokenizer
    q, _, _ = espeak.synthesize(QUESTION, voice="en-us+f2", rate=170, pitch=50)
    q = 0.6 * q / np.abs(q).max()
    mic = np.zeros(int((SECONDS + 5) * 16000), np.float32)   # 1 s of silence, the question, silence
    mic[16000:16000 + len(q)] = q
    audio.save_wav(tmp_path / "question.wav", mic)
    if PRESET_SIZED:
        run = preset_sized(run, tmp_path / "preset")
    # the 2-step model's text sampled (the default is greedy): greedy, it writes only PAD, and the page's
    # roles would go unshown
    with page(run, tmp_path, tmp_path / "question.wav", *([] if PRESET_SIZED else ["--temperature=0.7"])) as driver:
        driver.find_element("id", "start").click()            # a click: the browser lets the page start audio
        wait_for(driver, "window.nanosdm.sent > 0")
        time.sleep(SECONDS)
        # one script, one moment: the frames counted and the monologue shown (frames keep arriving)
        stats, turns = driver.execute_script("return [JSON.parse(JSON.stringify(window.nanosdm)), " + MONOLOGUE_JS + "]")
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
    frames = int(SECONDS / 0.08)
    # frames flowed both ways: all sent (the audio clock drives them), all but those in flight answered
    assert stats["errors"] == [] and stats["sent"] >= 0.9 * frames and stats["received"] >= stats["sent"] - 3
    # the microphone carried the question, at its own length: the worklet's 16 kHz is 16 kHz
    rms = np.array(stats["sentRms"])
    loud = np.flatnonzero(rms > 0.02)
    voiced = np.flatnonzero(judge.voiced(q))                    # the question's own voiced 20 ms windows
    spoken_s = (voiced[-1] - voiced[0] + 1) * 0.02
    assert len(loud) and abs((loud[-1] - loud[0] + 1) * 0.08 - spoken_s) <= 0.16, (loud, spoken_s)   # 2 frame edges
    assert rms.max() > 0.1 and np.median(rms) < 0.01          # then silence, not noise
    # the voice was scheduled: one 80 ms frame per answered step after the first (the acoustic delay)
    assert stats["scheduledSamples"] == FRAME * stats["scheduledFrames"] >= FRAME * (stats["received"] - 1)
    assert stats["playedEnergy"] > 0
    # the monologue: the page shows exactly the turns of the text stream the model wrote, each word in
    # its role's colour. A 2-step model writes garbage in both roles: the user colour got word pieces,
    # whatever they say (a trained model writes the question there).
    tok = Tokenizer.load(str(run / "runs" / "tiny" / "tokenizer.model"))
    ids = stats["ids"][:stats["received"]]
    want = [[serve.ROLES[tr["role"]], "".join(tok.sp.id_to_piece(i).replace("\u2581", " ") for _, i in tr["tokens"])]
            for tr in speech.read_text_stream(ids)]
    assert [t[:2] for t in turns] == want
    assert all(c == (USER_COLOUR if r == "user" else ASSISTANT_COLOUR) for r, _, c in turns)
    if not PRESET_SIZED:      # an untrained model may write nothing; the 2-step one writes in both roles
        assert stats["userTokens"] > 0 and any(r == "user" and text.strip() for r, text, _ in turns)
    # timing: every frame scheduled before its slot (late = a gap heard), and the pipeline's latency
    lat, rtt, cpu = (np.array(stats[k]) for k in ("latency", "rtt", "cpuMs"))
    figures = dict(seconds=SECONDS, frames_sent=stats["sent"], late_frames=stats["late"],
                   latency_ms_median=round(1000 * float(np.median(lat)), 1), latency_ms_p95=round(1000 * float(np.percentile(lat, 95)), 1),
                   rtt_ms_median=round(float(np.median(rtt)), 1), rtt_ms_p95=round(float(np.percentile(rtt, 95)), 1),
                   server_cpu_ms_median=round(float(np.median(cpu)), 2), server_cpu_ms_p95=round(float(np.percentile(cpu, 95)), 2),
                   reply_floor_ms=round(160 + 1000 * float(np.median(lat)), 1), user_tokens=stats["userTokens"])
    print("serve figures:", json.dumps(dict(figures, preset_sized=PRESET_SIZED)))
    assert stats["late"] <= max(2, 0.01 * frames), figures
    assert np.median(lat) < 0.3 and np.median(rtt) < 80, figures


def test_omni_page_speaks_a_question(run, tmp_path):
    """--model=omni on the page: "speak a question" plays a server-side eSpeak question in place of
    the microphone, the turn ends by itself, the answer's words show and its voice is scheduled;
    reset clears the conversation."""
    pytest.importorskip("espeakng_loader")
    from nanosdm.corpus import audio
    audio.save_wav(tmp_path / "silence.wav", np.zeros(16000 * 5, np.float32))
    with page(run, tmp_path, tmp_path / "silence.wav", "--model=omni", "--max_new_tokens=6") as driver:
        driver.find_element("id", "start").click()
        wait_for(driver, "!document.getElementById('question').disabled")
        assert driver.execute_script("return window.nanosdm.sent") == 0      # push to talk: nothing sent yet
        driver.find_element("id", "question").click()
        wait_for(driver, "window.nanosdm.omni.length == 1 && "
                         "window.nanosdm.scheduledFrames == window.nanosdm.omni[0].frames")
        # one script, one moment: the frames counted and the monologue shown (frames keep arriving)
        stats, turns = driver.execute_script("return [JSON.parse(JSON.stringify(window.nanosdm)), " + MONOLOGUE_JS + "]")
        driver.find_element("id", "reset").click()
        wait_for(driver, "document.getElementById('monologue').children.length == 0")
        assert driver.execute_script("return window.nanosdm.errors") == []
    reply = stats["omni"][0]
    assert stats["errors"] == [] and stats["sent"] >= 10        # the question, 80 ms at a time (0.8 s or more)
    assert 1 <= len(reply["pieces"]) <= 6 and reply["frames"] >= 1
    assert [r for r, _, _ in turns if r == "assistant"] == ["assistant"]
    assert next(t for r, t, _ in turns if r == "assistant") == "".join(reply["pieces"])
    assert stats["scheduledSamples"] == FRAME * reply["frames"] and stats["late"] == 0
    assert len(stats["omniReplyMs"]) == 1 and stats["omniReplyMs"][0] > 0
    print("omni figures:", json.dumps(dict(reply_ms=round(stats["omniReplyMs"][0], 1), first_audio_ms=reply["first_audio_ms"],
                                           compute_ms=reply["compute_ms"], frames=reply["frames"])))
