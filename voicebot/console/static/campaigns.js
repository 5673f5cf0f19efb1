// Campaigns: canceling cannot be undone, so it is asked twice; while a campaign runs, its progress is fetched
// again every few seconds (the same page, its campaigns part swapped in place).
(() => {
  const REFRESH_MS = 3000;

  function bind(root) {
    for (const form of root.querySelectorAll("form.action")) {
      if (!form.querySelector("button[data-action=cancel]")) continue;
      form.addEventListener("submit", (event) => {
        const name = decodeURIComponent(form.getAttribute("action").split("/").slice(-2)[0]);
        if (!window.confirm(`Cancel campaign ${name}? Its remaining contacts will not be called.`)) event.preventDefault();
      });
    }
  }

  async function refresh() {
    const live = document.getElementById("campaigns-live");
    if (!live || !live.hasAttribute("data-running")) return;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("campaigns-live");
        if (fresh) {
          live.replaceWith(fresh);
          bind(fresh);
          fresh.dataset.refreshed = String(Number(live.dataset.refreshed || 0) + 1);
        }
      }
    } catch (error) {
      // the server restarting or the network gone: the next round tries again
    }
    window.setTimeout(refresh, REFRESH_MS);
  }

  bind(document);
  window.setTimeout(refresh, REFRESH_MS);
})();
