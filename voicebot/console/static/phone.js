// The softphone: one call over the browser carrier's socket (voicebot/telephony/browser.py). The microphone goes
// to the server as 20 ms L16 frames; the server's L16 and marks go to the worklet (phone-worklet.js), which plays
// them and says when each mark was reached, and the mark is echoed then. Everything the call does (turns,
// barge-ins, tools, latencies) arrives as events and is shown as it happens. window.voicebotPhone holds the
// call's counters, for people debugging audio and for the browser tests.
(() => {
  const form = document.getElementById("phone");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const startButton = $("start"), hangupButton = $("hangup"), status = $("status"), level = $("level");
  const transcript = $("transcript"), eventList = $("events");
  let call = null;

  const state = window.voicebotPhone = {
    status: "idle", rate: null, contextRate: null, callId: null, receivedSamples: 0, playedMs: 0, queuedMs: 0,
    sentFrames: 0, marksReceived: 0, marksEchoed: 0, clears: 0, segments: [], events: [], closeCode: null,
    closeReason: null, maxLevel: 0,
  };

  function say(text, kind) {
    status.textContent = text;
    status.className = kind || "";
  }

  function item(list, text, kind) {
    const li = document.createElement("li");
    li.textContent = text;
    if (kind) li.className = kind;
    list.appendChild(li);
    li.scrollIntoView({block: "nearest"});
    return li;
  }

  const turnsById = new Map();     // the bot's turns, by item id, so a cut can mark what was heard

  function show(ev) {
    state.events.push(ev);
    switch (ev.type) {
      case "call_start":
        state.callId = ev.call_id;
        say(`Connected: ${ev.persona} on the ${ev.engine} engine (call ${ev.call_id}).`, "live");
        break;
      case "turn": {
        const who = ev.role === "assistant" ? "bot" : "you";
        const li = item(transcript, `${who}: ${ev.text}`, `turn ${who}`);
        if (ev.interrupted) li.classList.add("cut");
        if (ev.item_id) turnsById.set(ev.item_id, li);
        break;
      }
      case "turn_cut": {
        const li = turnsById.get(ev.item_id);
        if (li) { li.textContent = `bot: ${ev.text} …`; li.classList.add("cut"); }
        break;
      }
      case "barge_in": {
        const heard = (ev.heard || []).map((h) => `${h.heard_ms} of ${h.generated_ms} ms heard`).join(", ");
        item(eventList, `barge-in (${ev.trigger}): ${heard || "nothing playing"}`, "barge");
        break;
      }
      case "turn_latency":
        item(eventList, `reply after ${ev.latency_ms} ms`, "latency");
        break;
      case "tool":
        item(eventList, `tool ${ev.name}(${ev.arguments}) → ${ev.ok ? "" : "failed: "}${ev.result} ` +
             `(${ev.duration_ms} ms)`, ev.ok ? "tool" : "tool error");
        break;
      case "engine_switch":
        item(eventList, `engine ${ev.from} → ${ev.to}: ${ev.reason} (${ev.switch_ms} ms)`, "switch");
        break;
      case "transfer":
        item(eventList, `transferred to ${ev.target_name}`, "switch");
        break;
      case "dtmf":
        item(eventList, `key ${ev.digit}`);
        break;
      case "call_end":
        item(eventList, `call ended: ${ev.outcome || ev.end_reason || ""}`, "end");
        break;
    }
  }

  function streamUrl(persona, engine) {
    const url = new URL(form.dataset.stream, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("persona", persona);
    if (engine) url.searchParams.set("engine", engine);
    return url;
  }

  // An AudioContext at the call's rate, so that nothing is resampled in the page; a browser that cannot take the
  // microphone into one (or ?devicerate=1) gets the device's rate, and the worklet converts.
  function openAudio(c, rate) {
    if (new URLSearchParams(window.location.search).get("devicerate") !== "1") {
      try {
        c.context = new AudioContext({sampleRate: rate});
        return c.context.createMediaStreamSource(c.mic);
      } catch (err) {
        if (c.context) c.context.close();
      }
    }
    c.context = new AudioContext();
    return c.context.createMediaStreamSource(c.mic);
  }

  async function start() {
    if (call) return;
    const persona = form.elements.persona.value, engine = form.elements.engine.value;
    const rate = Number(form.elements.rate.value);
    Object.assign(state, {status: "starting", rate, contextRate: null, callId: null, receivedSamples: 0, playedMs: 0,
                          sentFrames: 0, marksReceived: 0, marksEchoed: 0, clears: 0, segments: [], events: [],
                          closeCode: null, closeReason: null, maxLevel: 0});
    transcript.replaceChildren();
    eventList.replaceChildren();
    startButton.disabled = true;
    hangupButton.disabled = false;
    say("Asking for the microphone…");
    const c = call = {ws: null, context: null, mic: null, node: null};
    try {
      c.mic = await navigator.mediaDevices.getUserMedia({audio: {
        channelCount: 1, echoCancellation: form.elements.echo.checked, noiseSuppression: form.elements.echo.checked,
        autoGainControl: form.elements.echo.checked}});
      const source = openAudio(c, rate);
      state.contextRate = c.context.sampleRate;
      await c.context.audioWorklet.addModule("/console/static/phone-worklet.js");
      if (call !== c) return;       // hung up meanwhile
      c.node = new AudioWorkletNode(c.context, "phone-io", {numberOfInputs: 1, numberOfOutputs: 1,
                                                             outputChannelCount: [1],
                                                             processorOptions: {callRate: rate}});
      source.connect(c.node);
      c.node.connect(c.context.destination);
    } catch (err) {
      end(`No microphone or audio: ${err.message || err}`, "error");
      return;
    }
    c.node.port.onmessage = (event) => fromWorklet(c, event.data);
    if (c.context.state === "suspended") {
      say("Click anywhere to let the page play audio.", "warn");
      document.addEventListener("click", () => c.context.resume(), {once: true});
    }
    const ws = c.ws = new WebSocket(streamUrl(persona, engine));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      ws.send(JSON.stringify({type: "start", rate, persona, ...(engine ? {engine} : {})}));
      state.status = "connected";
      say("Connected, waiting for the persona…", "live");
    };
    ws.onmessage = (event) => fromServer(c, event.data);
    ws.onclose = (event) => {
      state.closeCode = event.code;
      state.closeReason = event.reason;
      if (call !== c) return;
      if (event.code === 1000 || event.code === 1005) end("The call ended.");
      else end(`The server closed the call (${event.code}${event.reason ? `: ${event.reason}` : ""}).`, "error");
    };
  }

  function fromServer(c, data) {
    if (typeof data !== "string") {
      state.receivedSamples += data.byteLength / 2;
      c.node.port.postMessage({audio: data}, [data]);
      return;
    }
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.type === "mark") {
      state.marksReceived++;
      c.node.port.postMessage({mark: msg.name});
    } else if (msg.type === "clear") {
      state.clears++;
      c.node.port.postMessage({clear: true});
    } else if (msg.type === "event") {
      show(msg.event);
    } else if (msg.type === "hangup") {
      state.status = "hung up by the bot";
    }
  }

  function fromWorklet(c, msg) {
    if (msg.frame) {
      if (c.ws && c.ws.readyState === WebSocket.OPEN && state.status === "connected") {
        c.ws.send(msg.frame);
        state.sentFrames++;
      }
    } else if (msg.mark !== undefined) {
      if (c.ws && c.ws.readyState === WebSocket.OPEN) {
        c.ws.send(JSON.stringify({type: "mark", name: msg.mark}));
        state.marksEchoed++;
      }
    } else if (msg.segment) {
      state.segments.push(msg.segment);
    }
    if (msg.level !== undefined) {
      level.value = Math.min(1, msg.level * 4);
      state.maxLevel = Math.max(state.maxLevel, msg.level);
      state.playedMs = msg.playedMs;
      state.queuedMs = msg.queuedMs;
    }
  }

  function end(text, kind) {
    const c = call;
    call = null;
    if (c) {
      if (c.ws && c.ws.readyState <= WebSocket.OPEN) {
        if (c.ws.readyState === WebSocket.OPEN) c.ws.send(JSON.stringify({type: "hangup"}));
        c.ws.close(1000, "hung up");
      }
      if (c.mic) c.mic.getTracks().forEach((track) => track.stop());
      if (c.context) c.context.close();
    }
    state.status = "ended";
    level.value = 0;
    startButton.disabled = false;
    hangupButton.disabled = true;
    say(text, kind);
    if (state.callId) {      // its record (written a moment after the end): transcript, timeline, recording
      const link = document.createElement("a");
      link.href = `/console/records/${encodeURIComponent(state.callId)}`;
      link.textContent = "call record";
      link.className = "record-link";
      status.append(" ", link);
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); start(); });
  hangupButton.addEventListener("click", () => end("You hung up."));
  if (form.dataset.autostart === "1") start();
})();
