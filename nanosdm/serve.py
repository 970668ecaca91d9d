"""
Talk to it: a local server for the live page (`python sample.py --serve`).

    browser                                  server (this file)
    microphone -> 16 kHz -> 80 ms frame  --> LiveSession.step: codec encoder step, model step,
                                             codec decoder step (live.py, the offline loop's code)
    plays the voice, shows the text     <--  the frame's text token, both channels' codebook-0
                                             codes, the model's 80 ms of voice, the step's cost

One WebSocket per page (websocket.py, standard library only). Messages, page -> server: a binary
message is one frame, 1280 float32 samples at 16 kHz (5120 bytes); a text message is a JSON
command, {"type": "reset"} (a new conversation) or {"type": "end"} (--model=omni: the question
is over). Server -> page: JSON text messages ("hello", "reset", "error", "omni") and one binary
message per frame: a uint32 header length, the JSON header, then the voice as float32 samples.

--model=sft|dpo serves the dual-stream model, full duplex: every frame in gives a frame out.
--model=omni serves LLaMA-Omni's way, half duplex: the page sends frames while the user talks,
then "end"; the whole question goes through the ear, omni.respond answers and the unit vocoder
speaks. Every page has its own conversation; at most MAX_SESSIONS at once (then a clear refusal).
GET /question: an eSpeak question in a voice the model never heard, float32 samples at 16 kHz,
for machines without a microphone (the page feeds it in place of the microphone).
"""
import json
import os
import random
import struct
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch

from nanosdm import live, websocket
from nanosdm.codec import FRAME
from nanosdm.tokenizer import ASSISTANT, EOS, TEXT, USER, Tokenizer

WEB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
         "/page.js": ("page.js", "text/javascript"), "/capture.js": ("capture.js", "text/javascript")}
MAX_SESSIONS = 4        # each page costs a model step every 80 ms: a few at once, then refuse
IDLE_S = 60             # a page silent this long is gone (the page sends a keep-alive every 20 s):
                        # its thread and its place among MAX_SESSIONS are freed
MIN_QUESTION_S = 0.3    # --model=omni: shorter than this, a press of the button, not a question
HELD_S = 120            # --model=omni: what a held button keeps at most (then "too long a question")
ROLES = {USER: "user", ASSISTANT: "assistant"}


class Monologue:
    """Whose turn each text token belongs to, token by token: speech.read_text_stream's rules
    kept incrementally (a marker opens a turn and closes an open one of the same role; EOS closes
    the latest open turn; a word piece goes to the latest open turn, outside any it is dropped)."""

    def __init__(self):
        self.open = []

    def add(self, i):
        """-> (role or None, turn: "open" / "close" / None, is_word)."""
        if i in ROLES:
            self.open = [r for r in self.open if r != i] + [i]
            return ROLES[i], "open", False
        if i == EOS:
            return (ROLES[self.open.pop()], "close", False) if self.open else (None, None, False)
        if i > TEXT and self.open:
            return ROLES[self.open[-1]], None, True
        return None, None, False


def pack(header, wav=None):
    """A binary frame message: uint32 header length, the JSON header padded with spaces so the
    samples start 4-byte aligned (a Float32Array view needs it), then float32 samples."""
    head = json.dumps(header).encode()
    head += b" " * (-(4 + len(head)) % 4)
    body = b"" if wav is None else np.asarray(wav, dtype="<f4").tobytes()
    return struct.pack("<I", len(head)) + head + body


class Duplex:
    """One full-duplex conversation: a LiveSession and the monologue's turns."""

    def __init__(self, app):
        self.app, self.mono = app, Monologue()
        self.session = live.LiveSession(app.model, app.codec, temps=app.temps, ear=app.ear)

    def frame(self, samples):
        tick, cpu = time.perf_counter(), time.thread_time()
        out = self.session.step(samples)
        cpu_ms = (time.thread_time() - cpu) * 1000    # this thread's CPU: torch runs on it (one thread, see main)
        role, turn, word = self.mono.add(out["text"])
        header = dict(type="frame", t=out["t"], id=out["text"], role=role, turn=turn,
                      piece=self.app.piece(out["text"]) if word else None,
                      user_code=int(out["user_codes"][0]), model_frame=out["frame"],
                      model_code=None if out["codes"] is None else int(out["codes"][0]),
                      step_ms=round((time.perf_counter() - tick) * 1000, 2), cpu_ms=round(cpu_ms, 2))
        return [pack(header, out["wav"])]

    def end(self, send):
        pass          # full duplex: the turn ends when the model hears it end


class HalfDuplex:
    """One LLaMA-Omni conversation: frames gather while the user talks; "end" answers them."""

    def __init__(self, app):
        self.app, self.heard = app, []

    def frame(self, samples):
        if len(self.heard) * FRAME < HELD_S * 16000:     # a button held for an hour costs no memory
            self.heard.append(samples)
        return []

    def end(self, send):
        from nanosdm import omni, omni_data
        from nanosdm.asr import HOP, conv_lengths
        app, heard, self.heard = self.app, self.heard, []
        if len(heard) * FRAME < MIN_QUESTION_S * 16000:
            return send(json.dumps(dict(type="error", message=f"no question heard (under {MIN_QUESTION_S} s): "
                                        "hold the button while you speak")))
        wav = torch.cat(heard)
        # the ear's positions and the prompt (BOS USER speech EOS ASSISTANT) with its answer must fit
        enc = int(conv_lengths(torch.tensor(len(wav) // HOP + 1)))
        fits = min(app.asr.config["max_seq_len"] / enc, (app.model.lm.config["block_size"] - app.args.max_new_tokens - 1)
                   / (omni_data.downsampled_length(enc, app.model.config["k"]) + 4))
        if fits < 1:
            return send(json.dumps(dict(type="error", message=f"too long a question ({len(wav) / 16000:.1f} s): "
                                        f"this model hears at most about {int(fits * len(wav) / 16000)} s")))
        t0, cpu = time.time(), time.thread_time()
        feats = omni_data.encode_speech(app.asr, [wav])[0]
        example = omni_data.build_example([("speech", feats)], app.model.config["k"])
        held, sent = [torch.zeros(0)], [0]

        def speak(piece, last=False):
            # the vocoder's pieces go out as they come, in whole 80 ms frames (the last one padded):
            # the page's jitter buffer schedules them back to back
            held[0] = torch.cat([held[0], piece.float().cpu()])
            if last:
                held[0] = torch.nn.functional.pad(held[0], (0, -len(held[0]) % FRAME))
            while len(held[0]) >= FRAME:
                send(pack(dict(type="frame", t=sent[0], model_frame=sent[0]), held[0][:FRAME]))
                held[0], sent[0] = held[0][FRAME:], sent[0] + 1

        out = omni.respond(app.model, example, app.voc, app.codec, app.args.omega, app.args.max_new_tokens, t0=t0,
                           on_audio=speak)
        speak(torch.zeros(0), last=True)
        compute, cpu_ms = time.time() - t0, (time.thread_time() - cpu) * 1000
        send(json.dumps(dict(type="omni", user=app.asr.transcribe(wav), pieces=[app.piece(i) for i in out["tokens"]],
                             first_audio_ms=None if out["first_audio_s"] is None else round(out["first_audio_s"] * 1000, 1),
                             compute_ms=round(compute * 1000, 1), cpu_ms=round(cpu_ms, 1), frames=sent[0])))


class App:
    """The loaded models and the conversations under way."""

    def __init__(self, args, out_dir, device):
        self.args, self.omni, self.ear = args, args.model == "omni", None
        self.temps = (args.temperature, args.top_k, args.audio_temperature, args.audio_top_k)   # as --say samples
        from nanosdm.codec import Codec
        self.tok = Tokenizer.load(os.path.join(out_dir, "tokenizer.model"))
        self.codec = Codec.load(os.path.join(out_dir, "codec.pt"), device)
        if self.omni:
            from nanosdm import omni
            from nanosdm.asr import ASR
            from nanosdm.vocoder import Vocoder
            self.asr = ASR.load(os.path.join(out_dir, "asr.pt"), device)
            self.model = omni.load_model(os.path.join(out_dir, "omni.pt"), device)
            self.voc = Vocoder.load(os.path.join(out_dir, "vocoder.pt"), device)
        else:
            from nanosdm import dualstream
            self.model = dualstream.load_model(os.path.join(out_dir, f"{args.model}.pt"), device)
            self.ear = live.load_ear(self.model, out_dir, device)    # the units, if it hears through them
            # a fresh process's first steps are slow (allocations, lazy initialisation): paid here, they stay
            # out of the first page's jitter buffer, whose start fixes that conversation's latency for good
            warm = live.LiveSession(self.model, self.codec, ear=self.ear)
            for _ in range(3):
                warm.step(torch.zeros(FRAME))
        self.lock, self.active, self.errors = threading.Lock(), 0, []
        self.espeak_lock = threading.Lock()    # the eSpeak library keeps global state: one synthesis at a time
        self.max_sessions = MAX_SESSIONS

    def piece(self, i):
        return self.tok.sp.id_to_piece(int(i)).replace("\u2581", " ")

    def hello(self):
        delays = [] if self.omni else self.model.delays
        return dict(type="hello", model=self.args.model, preset=self.args.preset, mode="omni" if self.omni else "duplex",
                    frame=FRAME, rate=16000, delay_frames=max(delays) if delays else 0,
                    card=self.codec.config["codebook_size"])

    def conversation(self, conn):
        """Serve one page until it goes away; nothing it sends ends the server."""
        with self.lock:
            refused = self.active >= self.max_sessions
            self.active += not refused
        if refused:
            try:
                conn.send(json.dumps(dict(type="error", message=f"busy: this server already holds {self.max_sessions} "
                                          "conversations; close another page, then reload this one")))
            except websocket.Closed:
                pass
            return conn.close(websocket.TRY_LATER, "busy")
        try:
            conv = (HalfDuplex if self.omni else Duplex)(self)
            conn.send(json.dumps(self.hello()))
            while True:
                kind, data = conn.receive()
                if kind == websocket.BINARY:
                    if len(data) != FRAME * 4:
                        conn.send(json.dumps(dict(type="error", message=f"a frame is {FRAME} float32 samples "
                                                  f"({FRAME * 4} bytes), got {len(data)} bytes: ignored")))
                        continue
                    # one NaN would poison the model's cache for the rest of the conversation
                    x = torch.from_numpy(np.frombuffer(data, "<f4").copy()).nan_to_num(0.0).clamp(-1, 1)
                    replies = conv.frame(x)
                else:
                    try:
                        cmd = json.loads(data).get("type")
                    except (ValueError, AttributeError):
                        cmd = None
                    if cmd == "keepalive":
                        continue
                    if cmd == "reset":
                        conv, replies = (HalfDuplex if self.omni else Duplex)(self), [json.dumps(dict(type="reset"))]
                    elif cmd == "end":
                        replies = []
                        conv.end(conn.send)       # omni sends its reply as the vocoder speaks it
                    else:
                        replies = [json.dumps(dict(type="error", message=f"unknown command {data[:80]!r}: "
                                                   "reset or end"))]
                for msg in replies:
                    conn.send(msg)
        except websocket.Closed:
            pass          # the page went away, mid-reply or not: its conversation ends here
        finally:
            with self.lock:
                self.active -= 1

    def question(self):
        """An eSpeak question about the world, in a voice the model never heard: (text, voice, wav)."""
        from nanosdm.corpus import espeak, spokenworld
        rng = random.Random()
        data_dir = os.path.join(self.args.data_root, self.args.preset)
        text, voice = "what colour is the kotan?", "en-us+m3"
        world_path, corpus_path = os.path.join(data_dir, "world.jsonl"), os.path.join(data_dir, "corpus.json")
        if os.path.exists(world_path):
            world = [e for e in spokenworld.read_jsonl(world_path) if not e["text_only"]]
            text = spokenworld.fact_exchange(rng, rng.choice(world), rng.choice(list(spokenworld.ATTRIBUTES)), False)["question"]
        if os.path.exists(corpus_path):
            with open(corpus_path) as f:
                voice = rng.choice(json.load(f)["unseen_voices"])
        with self.espeak_lock:
            wav, _, _ = espeak.synthesize(text.lower(), voice=voice, rate=170, pitch=50)
        wav = np.asarray(wav, dtype=np.float32)
        return text, voice, wav * 0.6 / max(1e-4, float(np.abs(wav).max()))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # a WebSocket upgrade answers in HTTP/1.1
    timeout = IDLE_S                  # an idle connection (kept alive, or a silent page) is closed

    def log_message(self, fmt, *args):
        if self.server.app.args.verbose:
            super().log_message(fmt, *args)

    def reply(self, status, body, ctype="text/plain; charset=utf-8", headers=()):
        self.send_response(status)
        for name, value in [("Content-Type", ctype), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *headers]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/ws":
            return self.websocket()
        if path == "/question":
            try:
                text, voice, wav = self.server.app.question()
            except Exception as e:    # eSpeak missing or failing: the page says so, the server goes on
                return self.reply(503, f"no eSpeak question: {e}".encode())
            return self.reply(200, wav.astype("<f4").tobytes(), "application/octet-stream",
                              [("X-Question", text), ("X-Voice", voice)])
        if path not in FILES:
            return self.reply(404, b"not found")
        name, ctype = FILES[path]
        with open(os.path.join(WEB, name), "rb") as f:
            self.reply(200, f.read(), ctype)

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key")
        if not key or self.headers.get("Upgrade", "").lower() != "websocket":
            return self.reply(400, b"a WebSocket endpoint: connect with new WebSocket('ws://host/ws')")
        self.send_response(101)
        for name, value in [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                            ("Sec-WebSocket-Accept", websocket.accept_key(key))]:
            self.send_header(name, value)
        self.end_headers()
        self.server.app.conversation(websocket.Connection(self.rfile, self.wfile))
        self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True    # Ctrl-C does not wait for open pages

    def handle_error(self, request, client_address):
        # a bug in one conversation is recorded (the tests read it) and printed; the server goes on
        self.app.errors.append(traceback.format_exc())
        super().handle_error(request, client_address)


def make_server(app, port=8000, host="127.0.0.1"):
    """The server on host:port (0: any free port; server.server_address[1] says which)."""
    server = Server((host, port), Handler)
    server.app = app
    return server


def main(args, out_dir, device):
    # batch 1, 80 ms at a time: the ops are small, and one thread beats a pool's wake-ups per op
    # (and leaves the other cores to the browser); it also makes thread_time the step's CPU cost
    torch.set_num_threads(args.threads)
    app = App(args, out_dir, device)     # a missing checkpoint ends here, with sample.py's one line
    server = make_server(app, args.port)
    print(f"serving {args.model} ({args.preset}) on http://localhost:{server.server_address[1]}/  (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
