"""The StepFun model names documented for each API (``stepfun-api.md``), the first of each the one
voicebot uses by default; and the check of a model name a dialplan sets. The emulator accepts the same names.

An unknown name is a warning by default, not an error: StepFun adds models (and aliases) more often than this
list is updated, and a new name must not need a voicebot release. ``stepfun.strict_models: true`` in config.yaml
(or ``--strict-models``) refuses unknown names, for deployments that want a typo caught before the first call
rather than at the first call (the realtime socket fails its upgrade; ASR, chat and TTS answer 400).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

log = structlog.get_logger("voicebot.stepfun")

STRICT_MODELS_HINT = ("a name StepFun added since this list was written works: check it; stepfun.strict_models: "
                      "true in the config or --strict-models makes an unknown name an error")

# Only the 2.5 realtime model: the older step-audio-2 fails its WebSocket upgrade on the Step Plan path (§1.8).
REALTIME_MODELS: tuple[str, ...] = ("stepaudio-2.5-realtime",)
# step-asr-1.1-stream is an alias of 2.5 (§6).
ASR_MODELS: tuple[str, ...] = ("stepaudio-2.5-asr", "stepaudio-2-asr-pro", "step-asr-1.1-stream")
CHAT_MODELS: tuple[str, ...] = ("stepaudio-2.5-chat",)
# step-tts-2 and step-tts-mini: open platform; they take no ``instruction`` (§3).
TTS_MODELS: tuple[str, ...] = ("stepaudio-2.5-tts", "step-tts-2", "step-tts-mini")

KNOWN_MODELS: dict[str, tuple[str, ...]] = {"realtime": REALTIME_MODELS, "asr": ASR_MODELS, "chat": CHAT_MODELS,
                                            "tts": TTS_MODELS}


@dataclass(frozen=True)
class UnknownModel:
    """A model name a dialplan sets that StepFun does not document for that API, and where it is set."""

    source: str     # the dialplan file
    field: str      # its dotted path there: realtime.model, chain.chat_model, personas[1].chain.tts_model ...
    api: str        # realtime, asr, chat or tts
    name: str

    @property
    def known(self) -> tuple[str, ...]:
        return KNOWN_MODELS[self.api]

    @property
    def problem(self) -> str:
        return (f"{self.name!r} is not a documented StepFun {self.api} model (known: {', '.join(self.known)})")

    def __str__(self) -> str:
        return f"{self.source}: {self.field}: {self.problem}"


def unknown_model(source: str, field: str, api: str, name: str) -> UnknownModel | None:
    """None when ``name`` is a documented ``api`` model, else where it is set and what is known."""
    return None if name in KNOWN_MODELS[api] else UnknownModel(str(source), field, api, name)


def log_unknown_models(unknown: "list[UnknownModel]") -> None:
    """One warning per model name StepFun does not document (serve at startup, and a dialplan reload)."""
    for model in unknown:
        log.warning("stepfun_model_unknown", file=model.source, field=model.field, model=model.name,
                    api=model.api, known=list(model.known), message=f"{model.problem}; {STRICT_MODELS_HINT}")
