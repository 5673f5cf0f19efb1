// A call's page: the recording's waveform (peaks computed by the server: caller above the middle line, bot
// below), a playhead that follows the audio, and seeking by clicking the waveform, a turn or an event.
(() => {
  const canvas = document.getElementById("waveform");
  const audio = document.getElementById("recording");
  if (!canvas || !audio) return;
  const context = canvas.getContext("2d");
  let peaks = null;
  let duration = 0;

  function draw() {
    const { width, height } = canvas;
    context.clearRect(0, 0, width, height);
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, width, height);
    if (!peaks) return;
    const middle = height / 2;
    const lanes = peaks.peaks.length === 2 ? [[peaks.peaks[0], -1, "#2f6fde"], [peaks.peaks[1], 1, "#1f9d55"]]
                                           : [[peaks.peaks[0], 0, "#2f6fde"]];
    for (const [values, direction, colour] of lanes) {
      context.fillStyle = colour;
      const step = width / Math.max(values.length, 1);
      values.forEach((value, i) => {
        const size = Math.max(value * (middle - 2), value > 0 ? 1 : 0);
        if (!size) return;
        const x = Math.floor(i * step);
        const w = Math.max(Math.ceil(step), 1);
        if (direction < 0) context.fillRect(x, middle - size, w, size);
        else if (direction > 0) context.fillRect(x, middle, w, size);
        else context.fillRect(x, middle - size / 2, w, size);
      });
    }
    context.fillStyle = "#c7ccd6";
    context.fillRect(0, middle, width, 1);
    if (duration > 0) {
      const x = Math.round((audio.currentTime / duration) * width);
      context.fillStyle = "#b02a37";
      context.fillRect(x, 0, 2, height);
    }
  }

  function seek(seconds) {
    if (!(seconds >= 0)) return;
    audio.currentTime = Math.min(seconds, duration || seconds);
    audio.play().catch(() => {});
    draw();
  }

  fetch(canvas.dataset.peaks, { credentials: "same-origin" })
    .then((response) => (response.ok ? response.json() : Promise.reject(new Error(response.statusText))))
    .then((data) => {
      peaks = data;
      duration = data.duration_s;
      canvas.dataset.drawn = "1";
      draw();
    })
    .catch((error) => {
      canvas.dataset.error = String(error);
    });

  let frame = 0;
  const follow = () => {
    draw();
    frame = audio.paused ? 0 : requestAnimationFrame(follow);
  };
  audio.addEventListener("play", () => { if (!frame) frame = requestAnimationFrame(follow); });
  audio.addEventListener("seeked", draw);
  audio.addEventListener("loadedmetadata", () => { if (!duration) duration = audio.duration; draw(); });
  canvas.addEventListener("click", (event) => {
    const box = canvas.getBoundingClientRect();
    seek(((event.clientX - box.left) / box.width) * (duration || audio.duration));
  });
  for (const item of document.querySelectorAll("[data-t-ms]")) {
    const t = Number(item.dataset.tMs);
    if (item.dataset.tMs === "" || Number.isNaN(t)) continue;
    item.classList.add("seekable");
    item.addEventListener("click", () => seek(t / 1000));
  }
})();
