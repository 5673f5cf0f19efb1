// The softphone's audio, on the audio thread: the microphone cut into 20 ms L16 frames for the server, and the
// server's L16 played in order, with its marks reported the moment the audio before them has played (that is
// what tells the server what the user heard, so a barge-in truncates the model there).
//
// The AudioContext normally runs at the call's rate (16 or 24 kHz) and nothing is resampled. A browser that cannot
// take the microphone into such a context gets one at the device's rate, and this converts: the microphone
// averaged down to the call's rate, the bot interpolated up from it.
const GAP_ENDS_SEGMENT_S = 0.3;   // a pause this long ends a stretch of bot speech (as the simulated caller counts)

class PhoneIO extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.callRate = (options.processorOptions && options.processorOptions.callRate) || sampleRate;
    this.step = this.callRate / sampleRate;          // call-rate samples per context sample (1: no conversion)
    this.frame = new Int16Array(this.callRate / 50);   // 20 ms
    this.filled = 0;
    this.phase = 0;           // capture conversion: how far into the next call-rate sample
    this.acc = 0;
    this.accN = 0;
    this.carry = 0;           // playback conversion: where the next chunk starts (a fraction of a sample)
    this.queue = [];          // {pcm: Int16Array, at: next sample (fractional when converting)} or {mark: name}
    this.played = 0;          // context samples played since the call started
    this.segment = null;      // {start: audio clock s, played: context samples}: the stretch of bot speech playing
    this.idleSince = null;    // when the queue ran dry (a pause in the bot's speech)
    this.levelSum = 0;
    this.levelCount = 0;
    this.port.onmessage = (event) => this.command(event.data);
  }

  command(msg) {
    if (msg.audio) {
      this.queue.push({pcm: new Int16Array(msg.audio), at: -1});
    } else if (msg.mark !== undefined) {
      this.queue.push({mark: msg.mark});
      this.reachMarks();      // nothing queued before it: reached at once
    } else if (msg.clear) {
      // Dropped, marks included: their audio was never heard, so they are not echoed.
      const droppedMs = this.pendingMs();
      this.queue = [];
      this.carry = 0;
      this.endSegment(droppedMs > 0 ? "clear" : "drained", droppedMs);
    }
  }

  pendingMs() {
    let samples = 0;
    for (const entry of this.queue) {
      if (entry.pcm) samples += entry.pcm.length - Math.max(0, Math.floor(entry.at));
    }
    return samples * 1000 / this.callRate;
  }

  reachMarks() {
    while (this.queue.length && this.queue[0].mark !== undefined) {
      this.port.postMessage({mark: this.queue.shift().mark});
    }
  }

  endSegment(endedBy, droppedMs) {
    if (!this.segment) return;
    this.port.postMessage({segment: {startS: this.segment.start, playedMs: this.segment.played * 1000 / sampleRate,
                                     endedBy, droppedMs}});
    this.segment = null;
  }

  emit(s) {
    this.frame[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.filled === this.frame.length) {
      const out = this.frame.slice();
      this.port.postMessage({frame: out.buffer}, [out.buffer]);
      this.filled = 0;
    }
  }

  capture(input) {
    let sum = 0;
    for (let i = 0; i < input.length; i++) {
      const s = Math.max(-1, Math.min(1, input[i]));
      sum += s * s;
      if (this.step === 1) {
        this.emit(s);
        continue;
      }
      // Each call-rate sample is the mean of the context samples it spans (a box filter against aliasing).
      this.acc += s;
      this.accN++;
      this.phase += this.step;
      while (this.phase >= 1) {
        this.emit(this.acc / this.accN);
        this.phase -= 1;
        if (this.phase < 1) this.acc = this.accN = 0;
      }
    }
    this.levelSum += sum;
    this.levelCount += input.length;
    if (this.levelCount >= sampleRate / 20) {        // the meter moves every 50 ms
      this.port.postMessage({level: Math.sqrt(this.levelSum / this.levelCount),
                             playedMs: this.played * 1000 / sampleRate, queuedMs: this.pendingMs()});
      this.levelSum = this.levelCount = 0;
    }
  }

  play(output) {
    let n = 0;
    while (n < output.length && this.queue.length) {
      const head = this.queue[0];
      if (head.mark !== undefined) { this.reachMarks(); continue; }
      const pcm = head.pcm;
      if (head.at < 0) head.at = this.carry;
      if (this.step === 1) {
        const take = Math.min(output.length - n, pcm.length - head.at);
        for (let i = 0; i < take; i++) output[n + i] = pcm[head.at + i] / 0x8000;
        head.at += take;
        n += take;
      } else {
        while (n < output.length && head.at < pcm.length) {
          const i = Math.floor(head.at), next = i + 1 < pcm.length ? pcm[i + 1] : pcm[i];
          output[n++] = (pcm[i] + (next - pcm[i]) * (head.at - i)) / 0x8000;
          head.at += this.step;
        }
      }
      if (head.at >= pcm.length) {
        this.carry = head.at - pcm.length;
        this.queue.shift();
        this.reachMarks();
      }
    }
    output.fill(0, n);
    const now = currentFrame / sampleRate;
    if (n > 0) {
      if (!this.segment) this.segment = {start: now, played: 0};
      this.segment.played += n;
      this.played += n;
      this.idleSince = null;
    } else if (this.segment) {
      if (this.idleSince === null) this.idleSince = now;
      else if (now - this.idleSince > GAP_ENDS_SEGMENT_S) this.endSegment("drained", 0);
    }
  }

  process(inputs, outputs) {
    const input = inputs[0] && inputs[0][0];
    if (input) this.capture(input);
    const output = outputs[0];
    this.play(output[0]);
    for (let c = 1; c < output.length; c++) output[c].set(output[0]);
    return true;
  }
}

registerProcessor("phone-io", PhoneIO);
