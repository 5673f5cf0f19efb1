// One call as it happens: the snapshot of what was said and done so far, then each transcript line the call
// writes (turns, cuts, barge-ins, tools, engine switches, keypad) until it ends.
(() => {
  const list = document.getElementById("live-transcript");
  if (!list) return;
  const state = document.getElementById("live-state");
  const callState = document.getElementById("call-state");
  const engine = document.getElementById("engine");
  const duration = document.getElementById("duration");
  let started = null;
  let skew = 0;
  let over = false;
  let source = null;

  const at = (ms) => (ms == null ? "" : `${Math.floor(ms / 60000)}:${((ms % 60000) / 1000).toFixed(1).padStart(4, "0")}`);
  const json = (value) => (typeof value === "string" ? value : JSON.stringify(value));

  function item(className, t, parts) {
    const li = document.createElement("li");
    li.className = className;
    const time = document.createElement("span");
    time.className = "at";
    time.textContent = at(t);
    li.append(time);
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      li.append(span);
    }
    list.append(li);
    return li;
  }

  function show(line) {
    switch (line.type) {
      case "turn": {
        const bot = line.role === "assistant";
        const li = item(`turn ${bot ? "bot" : "caller"}`, line.t_ms, [["who", bot ? "bot" : "caller"], ["said", line.text]]);
        if (line.item_id) li.dataset.itemId = line.item_id;
        if (line.interrupted) li.classList.add("interrupted");
        break;
      }
      case "turn_cut": {
        const turns = [...list.querySelectorAll("li.turn.bot")];
        const turn = turns.find((li) => li.dataset.itemId === line.item_id) ||
                     turns.reverse().find((li) => li.querySelector(".said").textContent === line.full_text);
        if (turn) {
          turn.querySelector(".said").textContent = line.text;
          turn.classList.add("interrupted");
        }
        item("note cut", null, [["what", `bot cut off after ${line.heard_ms} ms`]]);
        break;
      }
      case "barge_in": {
        const heard = (line.heard || []).map((h) => `${h.heard_ms} of ${h.generated_ms} ms heard`).join(", ");
        item("note barge_in", line.t_ms, [["what", `barge-in (${line.trigger}) ${heard}`]]);
        break;
      }
      case "tool":
        item("note tool", line.t_ms, [["what", `tool ${line.name}${line.ok ? "" : " (failed)"}: ${json(line.arguments)} → ${json(line.result)}`]]);
        break;
      case "engine_switch":
        item("note failover", line.t_ms, [["what", `engine ${line.from} → ${line.to}: ${line.reason}`]]);
        engine.textContent = line.to;
        break;
      case "dtmf":
        item("note dtmf", line.t_ms, [["what", `caller pressed ${line.digit}`]]);
        break;
      case "call_end":
        over = true;
        callState.textContent = `ended: ${line.outcome}`;
        document.getElementById("record-link").hidden = false;
        state.dataset.state = "closed";
        source.close();
        break;
      default:
        if (["transfer", "dtmf_out", "silence_reprompt", "amd_verdict", "asr_failed", "tts_failed"].includes(line.type))
          item(`note ${line.type}`, line.t_ms, [["what", line.type.replace(/_/g, " ")]]);
    }
  }

  function connect() {
    source = new EventSource(list.dataset.events);
    source.addEventListener("snapshot", (event) => {
      const snapshot = JSON.parse(event.data);
      skew = Date.now() / 1000 - snapshot.now;
      started = snapshot.call.started;
      engine.textContent = snapshot.call.engine;
      list.replaceChildren();
      snapshot.events.forEach(show);
      state.dataset.state = "open";
    });
    source.addEventListener("dropped", () => { source.close(); connect(); });
    source.addEventListener("message", (event) => show(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      if (over) return;
      state.dataset.state = "closed";
      // Refused for good (the call ended before the stream opened: 204; signed out: 401): the page itself
      // says where to go now (the call's record, the login).
      if (source.readyState === EventSource.CLOSED) window.location.reload();
    });
  }

  connect();
  setInterval(() => {
    if (started != null && !over) duration.textContent = `${Math.round(Date.now() / 1000 - skew - started)} s`;
  }, 500);
})();
