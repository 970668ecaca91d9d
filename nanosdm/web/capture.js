// The capture worklet: runs on the browser's audio thread, 128 samples at a time at the context's
// own rate (usually 48 kHz). It low-pass filters and resamples to 16 kHz and posts one 80 ms frame
// (1280 samples) to the page as soon as the frame is complete. The page may hand it samples to
// play *instead of* the microphone (an eSpeak question, already at 16 kHz): they replace the
// microphone sample for sample, so they keep the microphone's real-time pace.
const OUT_RATE = 16000;
const FRAME = 1280;
const ZEROS = 16;          // zero crossings of the windowed sinc on each side of a sample

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / OUT_RATE;                 // input samples per output sample (3 at 48 kHz)
    this.cutoff = 0.45 / Math.max(1, this.ratio);        // cycles per input sample: 7.2 kHz, under 16 kHz's Nyquist
    this.half = Math.ceil(ZEROS * Math.max(1, this.ratio));  // filter half-width, in input samples
    this.buf = new Float32Array(8192);
    this.len = 0;          // samples held in buf
    this.base = 0;         // absolute input index of buf[0]
    this.pos = 0;          // absolute input position (fractional) of the next output sample
    this.frame = new Float32Array(FRAME);
    this.n = 0;
    this.inject = [];      // Float32Arrays at 16 kHz, played in place of the microphone
    this.injectAt = 0;
    this.port.onmessage = (e) => { if (e.data.inject) this.inject.push(e.data.inject); };
  }

  // one output sample at this.pos: a windowed-sinc low-pass read between input samples
  filtered() {
    const c = Math.floor(this.pos), frac = this.pos - c;
    let acc = 0, norm = 0;
    for (let k = 1 - this.half; k <= this.half; k++) {
      const i = c + k - this.base;
      const d = k - frac;
      const x = 2 * Math.PI * this.cutoff * d;
      const sinc = Math.abs(x) < 1e-9 ? 1 : Math.sin(x) / x;
      const w = 0.5 + 0.5 * Math.cos(Math.PI * d / this.half);   // Hann window
      const h = sinc * w;
      acc += (i >= 0 ? this.buf[i] : 0) * h;
      norm += h;
    }
    return acc / norm;     // unit gain at DC whatever the fractional position
  }

  emit(x) {
    let injected = false;
    if (this.inject.length) {
      x = this.inject[0][this.injectAt++];
      injected = true;
      if (this.injectAt >= this.inject[0].length) {
        this.inject.shift();
        this.injectAt = 0;
        if (!this.inject.length) this.port.postMessage({ injectEnd: currentTime });
      }
    }
    this.frame[this.n++] = x;
    this.injecting = this.injecting || injected;
    if (this.n === FRAME) {
      // currentTime is the start of this render block; the frame's last sample is in it
      this.port.postMessage({ frame: this.frame, end: currentTime + 128 / sampleRate, injected: this.injecting },
                            [this.frame.buffer]);
      this.frame = new Float32Array(FRAME);
      this.n = 0;
      this.injecting = false;
    }
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0].length ? inputs[0][0] : null;   // mono: the first channel
    const n = ch ? ch.length : 128;                                    // no microphone: silence
    if (this.len + n > this.buf.length) {
      const bigger = new Float32Array(2 * (this.len + n));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    if (ch) this.buf.set(ch, this.len); else this.buf.fill(0, this.len, this.len + n);
    this.len += n;
    while (this.pos + this.half < this.base + this.len) {
      this.emit(this.filtered());
      this.pos += this.ratio;
    }
    const drop = Math.floor(this.pos) - this.half - this.base;   // input no output will read again
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.base += drop;
    }
    return true;
  }
}

registerProcessor("capture", Capture);
