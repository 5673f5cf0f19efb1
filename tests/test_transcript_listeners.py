"""A call's transcript records reach its listeners (what shows the call live) as they are written, whatever
becomes of the file; a listener that fails is logged and dropped, and the transcript goes on."""

from __future__ import annotations

import structlog

from voicebot.transcript import TranscriptFile, read_transcript


def test_listeners_get_each_record_and_a_failing_one_is_dropped(tmp_path):
    heard: list[dict] = []

    def broken(record: dict) -> None:
        raise RuntimeError("page went away")

    transcript = TranscriptFile(tmp_path, "call-1")
    transcript.listeners += [broken, heard.append]
    with structlog.testing.capture_logs() as logs:
        transcript.write("turn", role="user", text="hello")
        transcript.write("turn_latency", latency_ms=420)
    transcript.close()
    assert [(r["type"], r.get("text"), r.get("latency_ms")) for r in heard] == [("turn", "hello", None),
                                                                                 ("turn_latency", None, 420)]
    assert transcript.listeners == [heard.append]
    assert [e["event"] for e in logs] == ["transcript_listener_failed"]
    assert [r["type"] for r in read_transcript(transcript.path)] == ["turn", "turn_latency"]


def test_listeners_still_hear_when_the_file_cannot_be_written(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    heard: list[dict] = []
    with structlog.testing.capture_logs():
        transcript = TranscriptFile(blocked, "call-2")
    transcript.listeners.append(heard.append)
    transcript.write("barge_in", heard=[])
    assert transcript.failed and [r["type"] for r in heard] == ["barge_in"]
