// The softphone's audio, on the audio thread: the microphone cut into 20 ms L16 frames for the server, and the
// server's L16 played in order, with its marks reported the moment the audio before them has played (that is
// what tells the server what the user heard, so a barge-in truncates the model there). The AudioContext runs at
// the call's rate (16 or 24 kHz), so nothing is resampled here.
const GAP_ENDS_SEGMENT_S = 0.3;   // a pause this long ends a stretch of bot speech (as the simulated caller counts)

class PhoneIO extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Int16Array(sampleRate / 50);   // 20 ms
    this.filled = 0;
    this.queue = [];          // {pcm: Int16Array, at: next sample} or {mark: name}, in the order received
    this.queued = 0;          // samples waiting
    this.played = 0;          // samples played since the call started
    this.segment = null;      // {start: audio clock s, played: samples}: the stretch of bot speech being played
    this.idleSince = null;    // when the queue ran dry (a pause in the bot's speech)
    this.levelSum = 0;
    this.levelCount = 0;
    this.port.onmessage = (event) => this.command(event.data);
  }

  command(msg) {
    if (msg.audio) {
      this.queue.push({pcm: new Int16Array(msg.audio), at: 0});
      this.queued += msg.audio.byteLength / 2;
    } else if (msg.mark !== undefined) {
      this.queue.push({mark: msg.mark});
      this.reachMarks();      // nothing queued before it: reached at once
    } else if (msg.clear) {
      // Dropped, marks included: their audio was never heard, so they are not echoed.
      const dropped = this.queued;
      this.queue = [];
      this.queued = 0;
      this.endSegment(dropped > 0 ? "clear" : "drained", dropped);
    }
  }

  reachMarks() {
    while (this.queue.length && this.queue[0].mark !== undefined) {
      this.port.postMessage({mark: this.queue.shift().mark, played: this.played});
    }
  }

  endSegment(endedBy, dropped) {
    if (!this.segment) return;
    this.port.postMessage({segment: {startS: this.segment.start, playedMs: this.segment.played * 1000 / sampleRate,
                                     endedBy, droppedMs: dropped * 1000 / sampleRate}});
    this.segment = null;
  }

  capture(input) {
    let sum = 0;
    for (let i = 0; i < input.length; i++) {
      const s = Math.max(-1, Math.min(1, input[i]));
      sum += s * s;
      this.frame[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.filled === this.frame.length) {
        const out = this.frame.slice();
        this.port.postMessage({frame: out.buffer}, [out.buffer]);
        this.filled = 0;
      }
    }
    this.levelSum += sum;
    this.levelCount += input.length;
    if (this.levelCount >= sampleRate / 20) {        // the meter moves every 50 ms
      this.port.postMessage({level: Math.sqrt(this.levelSum / this.levelCount), played: this.played,
                             queued: this.queued});
      this.levelSum = this.levelCount = 0;
    }
  }

  play(output) {
    let n = 0;
    while (n < output.length && this.queue.length) {
      const head = this.queue[0];
      if (head.mark !== undefined) { this.reachMarks(); continue; }
      const take = Math.min(output.length - n, head.pcm.length - head.at);
      for (let i = 0; i < take; i++) output[n + i] = head.pcm[head.at + i] / 0x8000;
      head.at += take;
      n += take;
      this.queued -= take;
      if (head.at === head.pcm.length) { this.queue.shift(); this.reachMarks(); }
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
