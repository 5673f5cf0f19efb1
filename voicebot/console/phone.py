"""The softphone page (/console/phone): talk to any persona from the browser, over the browser carrier's socket
(voicebot/telephony/browser.py). The page is plain HTML; static/phone.js runs the call and static/phone-worklet.js
captures and plays the audio. ``?persona=<name>&engine=<engine>&autostart=1`` starts the call as the page loads."""

from __future__ import annotations

from aiohttp import web

from ..dialplan import ENGINES
from ..telephony.browser import MEDIA_PATH, RATES
from . import auth, signed_in_only
from .html import e, page

ENGINE_HELP = {"realtime": "realtime model only", "chain": "ASR → chat → TTS",
               "auto": "realtime, chain if it fails"}


def _persona_options(personas, chosen: str | None) -> str:
    default = next((p.name for p in personas if p.default), personas[0].name if personas else None)
    chosen = chosen if any(p.name == chosen for p in personas) else default
    return "".join(f'<option value="{e(p.name)}" data-engine="{e(p.engine)}"'
                   f'{" selected" if p.name == chosen else ""}>{e(p.name)} ({e(p.language)}, {e(p.engine)})</option>'
                   for p in personas)


def _engine_options(chosen: str | None) -> str:
    own = '<option value="">the persona\'s own</option>'
    return own + "".join(f'<option value="{e(name)}"{" selected" if name == chosen else ""}>{e(name)}: '
                         f'{e(ENGINE_HELP[name])}</option>' for name in ENGINES)


def body(personas, query) -> str:
    if not personas:
        return "<p class=error>No personas: the dialplans folder holds none, so there is nobody to talk to.</p>"
    asked = query.get("persona")
    problem = ""
    autostart = query.get("autostart", "")
    if asked and not any(p.name == asked for p in personas):
        # The link names a persona this server does not have: say so rather than call another one.
        problem = (f'<p class="error" id="problem" role="alert">No persona named {e(repr(asked))} here (known: '
                   f'{e(", ".join(p.name for p in personas))}); pick one below.</p>')
        autostart = ""
    rate = query.get("rate", "16000")
    rates = "".join(f'<option value="{r}"{" selected" if str(r) == rate else ""}>{r // 1000} kHz</option>'
                    for r in RATES)
    return f"""<link rel="stylesheet" href="/console/static/phone.css">{problem}
<form id="phone" class="phone" data-stream="{e(MEDIA_PATH)}" data-autostart="{e(autostart)}">
  <label>Persona <select name="persona">{_persona_options(personas, query.get("persona"))}</select></label>
  <label>Engine <select name="engine">{_engine_options(query.get("engine"))}</select></label>
  <label>Audio <select name="rate">{rates}</select></label>
  <label class="check"><input type="checkbox" name="echo" checked> echo cancellation</label>
  <button type="submit" id="start">Start call</button>
  <button type="button" id="hangup" disabled>Hang up</button>
</form>
<div class="phone-status">
  <span id="status" role="status">Ready. Starting asks for the microphone; use headphones or keep echo
  cancellation on, or the persona hears itself and stops talking.</span>
  <label class="level">Microphone <meter id="level" min="0" max="1" low="0.05" high="0.7" value="0"></meter></label>
</div>
<div class="phone-panes">
  <section><h2>Transcript</h2><ol id="transcript" class="phone-transcript" aria-live="polite"></ol></section>
  <section><h2>Events</h2><ol id="events" class="events"></ol></section>
</div>"""


def add_routes(router: web.UrlDispatcher, services) -> None:
    @signed_in_only
    async def phone_page(request: web.Request) -> web.Response:
        # The dialplan is read per request: a reloaded one (SIGHUP, a changed file) shows at the next page load.
        return page("Phone", body(services.dialplan.personas, request.query), csrf=auth.csrf_token(request),
                    current="/console/phone", scripts=("phone.js",))

    router.add_get("/console/phone", phone_page)
