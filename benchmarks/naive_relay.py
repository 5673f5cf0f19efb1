"""The naive reference relay for the load test (``voicebot loadtest --target naive``).

Kept out of the product on purpose: it uses ``audioop.ratecv``, which has no anti-alias filter (see
"Audio pipeline" in RESULTS.md). Run by the load test as
``python benchmarks/naive_relay.py --port P --stepfun-ws ws://…/step_plan/v1``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys

from voicebot import latency
from voicebot.loadgen import run_app

def naive_relay_main(port: int, stepfun_ws: str) -> None:
    """The reference: a minimal Twilio ⇄ StepFun realtime relay as one would first write it — ``json`` and
    ``audioop`` (μ-law, ``ratecv``), no pacing (each 100 ms delta goes out as one media message at once, then a
    mark), barge-in on the model's ``speech_started`` only (clear + cancel, no truncation, nothing known of
    what the caller heard). Same latency histograms as the server (``in``, ``out``, ``barge_model``)."""
    import warnings

    import websockets
    from aiohttp import WSMsgType, web


    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    latency.ENABLED = True

    async def voice(request: web.Request) -> web.Response:
        await request.post()
        twiml = ('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                 f'<Stream url="ws://127.0.0.1:{port}/twilio/media"/></Connect></Response>')
        return web.Response(text=twiml, content_type="text/xml")

    async def media(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        stream_sid = None
        model = None
        reader = None
        up_state = None
        state = {"response": None, "down": None}

        async def from_model():
            async for text in model:
                t0 = latency.clock()
                event = json.loads(text)
                kind = event.get("type")
                if kind == "response.audio.delta":
                    pcm24 = base64.b64decode(event["delta"])
                    pcm8, state["down"] = audioop.ratecv(pcm24, 2, 1, 24000, 8000, state["down"])
                    payload = base64.b64encode(audioop.lin2ulaw(pcm8, 2)).decode()
                    await ws.send_str(json.dumps({"event": "media", "streamSid": stream_sid,
                                                  "media": {"payload": payload}}))
                    latency.record("out", latency.clock() - t0)
                    await ws.send_str(json.dumps({"event": "mark", "streamSid": stream_sid,
                                                  "mark": {"name": event["item_id"]}}))
                elif kind == "response.created":
                    state["response"] = event["response"]["id"]
                elif kind == "response.done":
                    state["response"] = None
                    state["down"] = None
                elif kind == "input_audio_buffer.speech_started":
                    await ws.send_str(json.dumps({"event": "clear", "streamSid": stream_sid}))
                    latency.record("barge_model", latency.clock() - t0)
                    if state["response"] is not None:
                        await model.send(json.dumps({"type": "response.cancel"}))

        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                t0 = latency.clock()
                data = json.loads(msg.data)
                event = data.get("event")
                if event == "media" and model is not None:
                    pcm8 = audioop.ulaw2lin(base64.b64decode(data["media"]["payload"]), 2)
                    pcm24, up_state = audioop.ratecv(pcm8, 2, 1, 8000, 24000, up_state)
                    await model.send(json.dumps({"type": "input_audio_buffer.append",
                                                 "audio": base64.b64encode(pcm24).decode()}))
                    latency.record("in", latency.clock() - t0)
                elif event == "start":
                    stream_sid = data["start"]["streamSid"]
                    model = await websockets.connect(f"{stepfun_ws}/realtime?model=stepaudio-2.5-realtime",
                                                     additional_headers={"Authorization": "Bearer load"},
                                                     max_size=None, compression=None)
                    await model.send(json.dumps({"type": "session.update", "session": {
                        "modalities": ["text", "audio"], "instructions": "You are the load-test assistant.",
                        "voice": "lively-girl", "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500,
                                           "prefix_padding_ms": 300, "energy_awakeness_threshold": 2500}}}))
                    await model.send(json.dumps({"type": "response.create", "response": {
                        "instructions": "Say exactly: Hello, thanks for calling the load test line. "
                                        "How can I help you today?"}}))
                    reader = asyncio.create_task(from_model())
                elif event == "stop":
                    break
        finally:
            if reader is not None:
                reader.cancel()
            if model is not None:
                await model.close()
        return ws

    async def debug(request: web.Request) -> web.Response:
        body = latency.snapshot()
        if request.query.get("reset") in ("1", "true"):
            latency.reset()
        return web.json_response(body)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def start_probe(app):
        latency.watch_gc()
        app["probe"] = asyncio.create_task(latency.loop_lag_probe())

    app = web.Application()
    app.router.add_post("/twilio/voice", voice)
    app.router.add_get("/twilio/media", media)
    app.router.add_get("/debug/latency", debug)
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(start_probe)
    run_app(app, port)


if __name__ == "__main__":
    cli = argparse.ArgumentParser()
    cli.add_argument("--port", type=int, required=True)
    cli.add_argument("--stepfun-ws", required=True)
    args = cli.parse_args()
    naive_relay_main(args.port, args.stepfun_ws)
    sys.exit(0)
