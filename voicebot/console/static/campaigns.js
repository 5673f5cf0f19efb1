// Campaigns: canceling cannot be undone, so it is asked twice; the other actions go straight through.
(() => {
  for (const form of document.querySelectorAll("form.action")) {
    const button = form.querySelector("button[data-action=cancel]");
    if (!button) continue;
    form.addEventListener("submit", (event) => {
      const name = decodeURIComponent(form.getAttribute("action").split("/").slice(-2)[0]);
      if (!window.confirm(`Cancel campaign ${name}? Its remaining contacts will not be called.`)) event.preventDefault();
    });
  }
})();
