// The live page: the microphone (or an eSpeak question) goes up to the server 80 ms at a time,
// the model's voice comes back and is scheduled behind a small jitter buffer, its inner monologue
// and both channels' codebook-0 codes are drawn as they come. Plain JavaScript, no build step.
"use strict";
const FRAME = 1280, RATE = 16000, FRAME_S = FRAME / RATE;
const JITTER_FRAMES = 2;   // 160 ms of slack: absorbs the server's and the network's hiccups
const STRIP = 200;         // frames in the codes strip (16 s)

// everything measured, in one global: the page shows it, the browser test reads it
const stats = window.nanosdm = {
  sent: 0, received: 0, scheduledSamples: 0, scheduledFrames: 0, late: 0, userTokens: 0, assistantTokens: 0,
  rtt: [], latency: [], stepMs: [], cpuMs: [], errors: [], hello: null, omni: [], questionEnd: null,
  sentRms: [], ids: [], playedEnergy: 0, omniReplyMs: [],   // each sent frame's loudness; the text ids by frame; the voice's sum of squares
};
let ws = null, ctx = null, node = null, mode = "duplex";
let playAt = 0;                 // context time where the next reply frame starts
let sentAt = [], capturedAt = [];   // by frame index t of the conversation: performance.now(), context time
let endSentAt = null;           // --model=omni: when the question was sent off
let awaitingReset = false, talking = false, sendEndAfterQuestion = false, endPending = false;
let userCodes = [], modelCodes = [], card = 16, delayFrames = 1;
let openTurns = {};             // role -> the element its words go into

const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

function connect() {
  ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (e) => (typeof e.data === "string" ? onJson(JSON.parse(e.data)) : onFrame(e.data));
  ws.onclose = () => status("disconnected from the server: reload the page");
}

async function start() {
  $("start").disabled = true;
  // the device's own rate: the worklet resamples to 16 kHz itself (some browsers refuse to
  // connect a 48 kHz microphone to a context forced to 16 kHz)
  ctx = new AudioContext();
  await ctx.audioWorklet.addModule("capture.js");
  node = new AudioWorkletNode(ctx, "capture", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
  node.port.onmessage = (e) => onCaptured(e.data);
  node.connect(ctx.destination);   // its output is silent; connected, the browser keeps running it
  try {
    const mic = await navigator.mediaDevices.getUserMedia(
      { audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false } });
    ctx.createMediaStreamSource(mic).connect(node);
    status(`listening (microphone at ${ctx.sampleRate} Hz, sent at 16 kHz)`);
  } catch (err) {
    status(`no microphone (${err.name}): use "speak a question"`);
  }
  for (const id of ["question", "reset", "talk"]) $(id).disabled = false;
}

function onCaptured(msg) {
  if (msg.injectEnd !== undefined) {
    stats.questionEnd = msg.injectEnd;
    // the question's last samples are in the frame being filled: end the turn once it is sent
    if (sendEndAfterQuestion) { sendEndAfterQuestion = false; endPending = true; }
    return;
  }
  if (!ws || ws.readyState !== WebSocket.OPEN || !stats.hello) return;
  if (mode === "omni" && !talking) return;          // push to talk: only while the button is held
  const t = sentAt.length;
  sentAt[t] = performance.now();
  capturedAt[t] = msg.end;
  let sq = 0;
  for (const x of msg.frame) sq += x * x;
  stats.sentRms[t] = Math.sqrt(sq / FRAME);
  ws.send(msg.frame.buffer);
  stats.sent++;
  if (endPending) { endPending = false; endTurn(); }
}

function onJson(msg) {
  if (msg.type === "hello") {
    stats.hello = msg;
    mode = msg.mode; card = msg.card; delayFrames = msg.delay_frames;
    $("model").textContent = `${msg.model} (${msg.preset}), ${msg.mode === "omni" ? "half duplex: push to talk" : "full duplex"}`;
    $("talk").hidden = mode !== "omni";
  } else if (msg.type === "reset") {
    awaitingReset = false;
  } else if (msg.type === "error") {
    stats.errors.push(msg.message);
    status(msg.message);
  } else if (msg.type === "omni") {
    stats.omni.push(msg);
    addWords("user", msg.user ? [" " + msg.user] : []);
    addWords("assistant", msg.pieces);
    status(`answered: its voice played ${stats.omniReplyMs.slice(-1)[0].toFixed(0)} ms after the question ended ` +
           `(server: first audio ready after ${msg.first_audio_ms} ms, all ${msg.frames} frames after ${msg.compute_ms} ms)`);
  }
}

function onFrame(buf) {
  const n = new DataView(buf).getUint32(0, true);
  const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const wav = new Float32Array(buf, 4 + n);
  if (awaitingReset) return;                         // the old conversation's last frames
  stats.received++;
  if (mode === "duplex") {
    if (sentAt[h.t] !== undefined) stats.rtt.push(performance.now() - sentAt[h.t]);
    stats.stepMs.push(h.step_ms); stats.cpuMs.push(h.cpu_ms);
    stats.ids[h.t] = h.id;
    if (h.turn === "open") openTurn(h.role);
    if (h.piece) { addWords(h.role, [h.piece]); }
    userCodes[h.t] = h.user_code;
    if (h.model_frame !== null) modelCodes[h.model_frame] = h.model_code;
  }
  if (wav.length) {
    const at = schedule(wav);
    if (mode === "omni" && endSentAt !== null) {   // the question's end -> the reply's voice starts playing
      stats.omniReplyMs.push(performance.now() - endSentAt + (at - ctx.currentTime) * 1000);
      endSentAt = null;
    }
    // pipeline latency: the user's frame t fully captured -> the voice that came back with it starts
    if (mode === "duplex" && capturedAt[h.t] !== undefined) stats.latency.push(at - capturedAt[h.t]);
  }
}

function schedule(wav) {
  const now = ctx.currentTime;
  if (playAt < now + 0.005) {                        // its slot has passed (or the first frame)
    if (playAt > 0) stats.late++;                    // a gap the listener hears
    playAt = now + JITTER_FRAMES * FRAME_S;
  }
  const buffer = ctx.createBuffer(1, wav.length, RATE);   // 16 kHz: the browser resamples on playback
  buffer.copyToChannel(wav, 0);
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  src.connect(ctx.destination);
  src.start(playAt);
  for (const x of wav) stats.playedEnergy += x * x;
  const at = playAt;
  playAt += wav.length / RATE;
  stats.scheduledSamples += wav.length;
  stats.scheduledFrames++;
  return at;
}

function openTurn(role) {
  const div = document.createElement("div");
  div.className = role;
  div.dataset.label = role === "user" ? "heard" : "said";
  $("monologue").appendChild(div);
  openTurns[role] = div;
  $("monologue").scrollTop = $("monologue").scrollHeight;
}

function addWords(role, pieces) {
  if (!pieces.length) return;
  if (!openTurns[role] || mode === "omni") openTurn(role);
  openTurns[role].textContent += pieces.join("");
  if (role === "user") stats.userTokens += pieces.length; else stats.assistantTokens += pieces.length;
  $("monologue").scrollTop = $("monologue").scrollHeight;
}

function drawCodes() {
  const c = $("codes"), g = c.getContext("2d"), w = c.width / STRIP, rows = [modelCodes, userCodes];
  const last = Math.max(userCodes.length, modelCodes.length);
  g.clearRect(0, 0, c.width, c.height);
  rows.forEach((codes, r) => {
    for (let t = Math.max(0, last - STRIP); t < last; t++) {
      if (codes[t] === undefined || codes[t] === null) continue;
      g.fillStyle = `hsl(${(codes[t] * 360) / card}, 70%, ${r ? 45 : 55}%)`;
      g.fillRect((t - Math.max(0, last - STRIP)) * w, r * c.height / 2, Math.ceil(w), c.height / 2 - 2);
    }
  });
}

const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const recent = (xs) => xs.slice(-50);

function showStats() {
  if (mode === "duplex") drawCodes();
  const buffered = ctx ? Math.max(0, playAt - ctx.currentTime) * 1000 : 0;
  const lat = mean(recent(stats.latency)) * 1000;
  $("stats").textContent =
    `frames sent ${stats.sent}, received ${stats.received} | round trip ${mean(recent(stats.rtt)).toFixed(1)} ms | ` +
    `server step ${mean(recent(stats.stepMs)).toFixed(1)} ms (CPU ${mean(recent(stats.cpuMs)).toFixed(1)} ms) | ` +
    `frame captured -> its reply playing ${lat.toFixed(0)} ms (+${(1 + delayFrames) * 80} ms the model's frame and ` +
    `delay) | buffered ${buffered.toFixed(0)} ms | late frames ${stats.late} | samples scheduled ${stats.scheduledSamples}`;
}

async function speakQuestion() {
  const r = await fetch("question");
  if (!r.ok) { status(await r.text()); return; }
  const samples = new Float32Array(await r.arrayBuffer());
  status(`asking (${r.headers.get("X-Voice")}): "${r.headers.get("X-Question")}"`);
  const local = samples.slice();                     // the user hears the question too
  const buffer = ctx.createBuffer(1, local.length, RATE);
  buffer.copyToChannel(local, 0);
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  src.connect(ctx.destination);
  src.start();
  if (mode === "omni") { talking = true; sendEndAfterQuestion = true; }
  node.port.postMessage({ inject: samples }, [samples.buffer]);
}

function endTurn() {
  talking = false;
  playAt = 0;                                        // the reply starts its own jitter buffer
  endSentAt = performance.now();
  ws.send(JSON.stringify({ type: "end" }));
  status("thinking...");
}

function reset() {
  awaitingReset = true;                              // frames of the old conversation still in flight are dropped
  ws.send(JSON.stringify({ type: "reset" }));
  sentAt = []; capturedAt = []; stats.sentRms = []; stats.ids = []; userCodes = []; modelCodes = []; openTurns = {};
  playAt = 0;
  $("monologue").textContent = "";
}

window.addEventListener("load", () => {
  connect();
  $("start").onclick = start;
  $("question").onclick = speakQuestion;
  $("reset").onclick = reset;
  $("talk").onpointerdown = () => { talking = true; status("listening: release to send"); };
  $("talk").onpointerup = $("talk").onpointerleave = () => { if (talking) endTurn(); };   // released, or slid off
  setInterval(showStats, 250);
  // push to talk sends nothing between questions: tell the server the page is still here
  setInterval(() => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "keepalive" })); }, 20000);
});
