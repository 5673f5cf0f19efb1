// Live calls: the calls in progress, kept up to date by the server's event stream (a snapshot first, then each
// call's start, turns, engine switches and end). Durations tick on the server's clock.
(() => {
  const body = document.getElementById("live-calls");
  if (!body) return;
  const empty = document.getElementById("no-live-calls");
  const ended = document.getElementById("ended-calls");
  const state = document.getElementById("live-state");
  const calls = new Map();          // call id -> {row, started}
  let skew = 0;                     // browser clock minus server clock, seconds
  let source = null;

  const cell = (text) => { const td = document.createElement("td"); td.textContent = text ?? ""; return td; };
  const clockText = (seconds) => `${Math.floor(seconds / 60)}:${String(Math.floor(seconds % 60)).padStart(2, "0")}`;
  const lastTurn = (turn) => (turn ? `${turn.role === "assistant" ? "bot" : "caller"}: ${turn.text}` : "");

  function add(call) {
    if (calls.has(call.call_id)) return;
    const row = document.createElement("tr");
    row.dataset.id = call.call_id;
    const started = cell(new Date(call.started * 1000).toISOString().replace("T", " ").slice(0, 19));
    const link = document.createElement("a");
    link.href = `/console/calls/${encodeURIComponent(call.call_id)}`;
    link.textContent = started.textContent;
    started.textContent = "";
    started.append(link);
    row.append(started, cell(""), cell(call.carrier), cell(call.persona), cell(call.engine),
               cell(`${call.from_number ?? ""} → ${call.to_number ?? ""}`), cell(lastTurn(call.last_turn)));
    row.cells[1].className = "duration";
    row.cells[4].className = "engine";
    row.cells[6].className = "last-turn";
    body.prepend(row);
    calls.set(call.call_id, { row, started: call.started });
    tick();
  }

  function end(callId, line) {
    const call = calls.get(callId);
    if (!call) return;
    call.row.remove();
    calls.delete(callId);
    const item = document.createElement("li");
    item.dataset.id = callId;
    const link = document.createElement("a");
    link.href = `/console/records/${encodeURIComponent(callId)}`;
    link.textContent = callId;
    item.append(link, ` ended: ${line.outcome ?? ""} after ${line.duration_s ?? "?"} s`);
    ended.prepend(item);
    tick();
  }

  function tick() {
    const now = Date.now() / 1000 - skew;
    for (const { row, started } of calls.values()) row.cells[1].textContent = clockText(Math.max(0, now - started));
    empty.hidden = calls.size > 0;
    body.dataset.count = String(calls.size);
  }

  function connect() {
    source = new EventSource(body.dataset.events);
    source.addEventListener("snapshot", (event) => {
      const snapshot = JSON.parse(event.data);
      skew = Date.now() / 1000 - snapshot.now;
      for (const id of [...calls.keys()]) { calls.get(id).row.remove(); calls.delete(id); }
      snapshot.calls.forEach(add);
      state.dataset.state = "open";
      tick();
    });
    source.addEventListener("dropped", () => { source.close(); connect(); });   // fell behind: start afresh
    source.addEventListener("error", () => {
      state.dataset.state = "closed";
      if (source.readyState === EventSource.CLOSED) window.location.reload();   // refused: signed out
    });
    source.addEventListener("message", (event) => {
      const { call_id: callId, event: line } = JSON.parse(event.data);
      if (line.type === "call_start") {
        add({ call_id: callId, carrier: line.carrier, persona: line.persona, engine: line.engine,
              from_number: line.from_number, to_number: line.to_number, started: line.ts, last_turn: null });
      } else if (line.type === "call_end") {
        end(callId, line);
      } else if (calls.has(callId)) {
        const { row } = calls.get(callId);
        if (line.type === "turn") row.cells[6].textContent = lastTurn({ role: line.role, text: line.text });
        if (line.type === "engine_switch") row.cells[4].textContent = line.to;
      }
    });
  }

  connect();
  setInterval(tick, 1000);
})();
