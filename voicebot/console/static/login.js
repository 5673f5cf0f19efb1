// A sign-in link carries the token in the fragment (/console/login#token=...), which browsers never send to the
// server or put in its logs: fill the form with it, forget it from the address bar, and submit.
(() => {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (!match) return;
  history.replaceState(null, "", window.location.pathname + window.location.search);
  const form = document.getElementById("login");
  form.elements.token.value = decodeURIComponent(match[1]);
  form.submit();
})();
