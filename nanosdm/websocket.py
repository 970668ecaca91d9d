"""
A minimal WebSocket (RFC 6455) over a plain socket: the handshake's answer, and whole messages
read and written. Enough for one page talking to serve.py on localhost: text and binary messages,
fragmented messages, ping/pong and the closing handshake; no extensions (no compression), no
subprotocols.

Why by hand: the live page needs a two-way stream of small messages (80 ms frames up, 80 ms of
voice down); a WebSocket is what a browser offers for that, and its framing is a page of the RFC.
Written here, `python sample.py --serve` needs nothing beyond the standard library and numpy.

A frame on the wire (RFC 6455 §5.2):

    byte 0   FIN (1 bit: last fragment) | 3 reserved bits | opcode (4 bits)
    byte 1   MASK (1 bit) | payload length (7 bits: 0..125, or 126: a 16-bit length follows,
             127: a 64-bit length follows)
    [4 bytes of masking key, if MASK]    a client masks every frame, a server never does
    payload  (XOR-ed with the key, byte i with key[i % 4], if masked)
"""
import base64
import hashlib
import os
import socket
import struct

import numpy as np

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"   # RFC 6455 §1.3: the same for every server
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 1 << 20      # one frame of audio is 5 KiB: anything near a MiB is a mistake, refused
NORMAL, PROTOCOL_ERROR, INVALID_DATA, TOO_BIG, TRY_LATER = 1000, 1002, 1007, 1009, 1013


class Closed(Exception):
    """The other side closed the connection (cleanly or not)."""


def accept_key(key):
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key: it proves the server read the request."""
    return base64.b64encode(hashlib.sha1((key.strip() + GUID).encode()).digest()).decode()


def mask(payload, key):
    """XOR payload with the 4-byte key repeated (the same operation masks and unmasks)."""
    data = np.frombuffer(payload, np.uint8)
    return (data ^ np.resize(np.frombuffer(key, np.uint8), len(data))).tobytes()


class Connection:
    """One open WebSocket over a connected socket's file objects (rfile: read, wfile: write).
    is_client: this end masks what it sends (a test's client; the server does not)."""

    def __init__(self, rfile, wfile, is_client=False):
        self.rfile, self.wfile, self.is_client = rfile, wfile, is_client
        self.closed = False

    def _read(self, n):
        try:
            data = self.rfile.read(n)
        except OSError as e:                  # a reset, or the socket's timeout
            raise Closed(f"connection lost: {e}") from None
        if data is None or len(data) < n:     # the peer went away mid-frame
            raise Closed("connection lost")
        return data

    def _frame(self):
        b0, b1 = self._read(2)
        fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8))[0]
        if n > MAX_MESSAGE:
            self.close(TOO_BIG, "message too big")
            raise Closed("message too big")
        if bool(masked) == self.is_client:     # §5.1: a client must mask, a server must not
            self.close(PROTOCOL_ERROR, "masking")
            raise Closed("protocol error: masking")
        key = self._read(4) if masked else None
        payload = self._read(n)
        return bool(fin), opcode, mask(payload, key) if masked else payload

    def receive(self):
        """The next whole message: (TEXT, str) or (BINARY, bytes). Answers pings on the way;
        raises Closed when the peer closes or the connection drops."""
        parts, kind = [], None
        while True:
            fin, opcode, payload = self._frame()
            if opcode == PING:
                self.send(payload, PONG)
                continue
            if opcode == PONG:
                continue
            if opcode == CLOSE:
                if not self.closed:      # answer the closing handshake with the same code
                    self.close(struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else NORMAL)
                raise Closed("closed by peer")
            if opcode in (TEXT, BINARY):
                parts, kind = [payload], opcode
            elif opcode == CONT and kind is not None:
                parts.append(payload)
            else:
                self.close(PROTOCOL_ERROR, "unexpected frame")
                raise Closed("protocol error: unexpected frame")
            if sum(map(len, parts)) > MAX_MESSAGE:
                self.close(TOO_BIG, "message too big")
                raise Closed("message too big")
            if fin:
                data = b"".join(parts)
                if kind == BINARY:
                    return BINARY, data
                try:
                    return TEXT, data.decode("utf-8")
                except UnicodeDecodeError:     # §8.1: a text message must be UTF-8
                    self.close(INVALID_DATA, "text is not UTF-8")
                    raise Closed("invalid UTF-8") from None

    def send(self, data, opcode=None):
        """Send one message in one frame: str as TEXT, bytes as BINARY (or the opcode given)."""
        if isinstance(data, str):
            data, opcode = data.encode("utf-8"), opcode or TEXT
        opcode = opcode or BINARY
        n = len(data)
        head = bytes([0x80 | opcode])
        bit = 0x80 if self.is_client else 0
        if n < 126:
            head += bytes([bit | n])
        elif n < 1 << 16:
            head += bytes([bit | 126]) + struct.pack(">H", n)
        else:
            head += bytes([bit | 127]) + struct.pack(">Q", n)
        if self.is_client:
            key = os.urandom(4)
            head, data = head + key, mask(data, key)
        try:
            self.wfile.write(head + data)
            self.wfile.flush()
        except (OSError, ValueError) as e:     # a reset or closed socket: the page went away
            raise Closed(f"connection lost: {e}") from None

    def close(self, code=NORMAL, reason=""):
        """Start (or answer) the closing handshake; safe to call twice or on a dead socket."""
        if self.closed:
            return
        self.closed = True
        try:
            self.send(struct.pack(">H", code) + reason.encode()[:120], CLOSE)
        except Closed:
            pass


def connect(host, port, path="/ws", timeout=10.0):
    """A client Connection (the tests' plain client): the opening handshake over a new socket."""
    sock = socket.create_connection((host, port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    rfile, wfile = sock.makefile("rb"), sock.makefile("wb")
    status = rfile.readline().decode()
    headers = {}
    while True:
        line = rfile.readline().decode().strip()
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if " 101 " not in status or headers.get("sec-websocket-accept") != accept_key(key):
        sock.close()
        raise ConnectionError(f"websocket handshake refused: {status.strip()}")
    conn = Connection(rfile, wfile, is_client=True)
    conn.sock = sock
    return conn
