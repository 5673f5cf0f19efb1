"""Hypothesis strategies for hostile input, shared by the fuzz tests (tests/test_fuzz_*.py).

Random bytes rarely get past the first ``json.loads``; what finds bugs is input that is *almost* right: a real
message with one field of the wrong type, missing, huge, NaN, or base64 that is not. ``mutated(template)``
makes those from a valid message; ``hostile_value`` is what goes in the field."""

from __future__ import annotations

import base64
import copy
import json

from hypothesis import strategies as st

# Values that have broken parsers: numbers past int64 and float range, NaN/inf (Python's json reads "NaN",
# "Infinity" and 1e999 as floats), numeric-looking text, text that is almost base64, empty and huge strings.
TRICKY_TEXT = ("", " ", "\x00", "0", "-1", "1e999", "NaN", "inf", "-inf", "infk", "nank", "16k", "8000.5",
               "audio/l16;rate=infk", "audio/l16;rate=", "=", "A", "AA=", "AAA", "A===", "////", "%%%",
               "\u202e", "\ud7ff", "0x10", "１６０００", "a" * 3000,
               # URLs urlsplit refuses (an unclosed IPv6 bracket) or whose port is out of range
               "http://[::1", "https://[::1]:99999/x", "http://host.test:0x50/", "ws://h:-1",
               # a codec or rate other than the one the stream started with: what decodes the audio changes
               "audio/l16", "L16", "audio/x-l16", "PCMA", "audio/x-alaw", "slin16", "slin24", "alaw", "16000",
               "24000", "stereo", "mono")
TRICKY_NUMBERS = (0, -1, 1, 2 ** 31, 2 ** 63, 2 ** 64 + 1, -(2 ** 63) - 1, 10 ** 30, -(10 ** 30), 8000, 16000,
                  float("inf"), float("-inf"), float("nan"), 1e308, -0.0, 0.5, 160.0)

scalars = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from(TRICKY_NUMBERS), st.integers(), st.floats(),
    st.sampled_from(TRICKY_TEXT), st.text(max_size=12),
    st.binary(max_size=41).map(lambda b: base64.b64encode(b).decode()),   # valid base64 of any byte count
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=6)
hostile_value = st.one_of(scalars, json_values)


def _slots(value, path=()):
    """Every (path to a container, key) in a JSON document, in a stable order."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield path, key
            yield from _slots(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield path, index
            yield from _slots(child, path + (index,))


def _at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw, template: dict, *, max_changes: int = 3) -> dict:
    """``template`` with one to ``max_changes`` fields replaced by a hostile value, deleted, or wrapped in a list."""
    doc = copy.deepcopy(template)
    for _ in range(draw(st.integers(1, max_changes))):
        slots = list(_slots(doc))
        if not slots:
            break
        path, key = draw(st.sampled_from(slots))
        container = _at(doc, path)
        action = draw(st.sampled_from(("replace", "replace", "delete", "wrap")))
        if action == "delete":
            del container[key]
        elif action == "wrap":
            container[key] = [container[key]]
        else:
            container[key] = draw(hostile_value)
    if draw(st.booleans()):      # and perhaps a field nobody asked for
        doc[draw(st.text(max_size=8))] = draw(hostile_value)
    return doc


def dumps(doc) -> str:
    """JSON as a peer may write it: NaN and Infinity included (Python's reader takes them)."""
    return json.dumps(doc, separators=(",", ":"))


@st.composite
def broken_text(draw, template: dict) -> str:
    """JSON text that does not parse or parses as something else: cut short, a bare value, deep nesting."""
    text = dumps(template)
    kind = draw(st.sampled_from(("cut", "scalar", "deep", "long number", "garbage")))
    if kind == "cut":
        return text[:draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "scalar":
        return dumps(draw(json_values.filter(lambda v: not isinstance(v, dict))))
    if kind == "deep":       # past the JSON reader's recursion limit, well inside a 64 kB message
        depth = draw(st.sampled_from((1000, 20000, 60000)))
        return draw(st.sampled_from(("[", '{"a":'))) * depth
    if kind == "long number":   # Python refuses to read an integer of over 4300 digits
        return text[:-1] + ',"n":' + "9" * draw(st.sampled_from((4301, 20000))) + "}"
    return draw(st.text(max_size=40))


def json_messages(templates: list[dict]) -> st.SearchStrategy[str]:
    """Text frames around a carrier's real messages: as they are, mutated, and broken."""
    template = st.sampled_from(templates)
    return st.one_of(template.map(dumps), template.flatmap(mutated).map(dumps), template.flatmap(broken_text))
