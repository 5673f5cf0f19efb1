"""Per-contact variables in a persona's text: ``{first_name}`` in its instructions, greeting or a campaign's
voicemail message is the contact's ``first_name`` column. ``{{`` and ``}}`` stand for literal braces."""

from __future__ import annotations

import string
from collections.abc import Mapping

_FORMATTER = string.Formatter()


def template_fields(text: str | None) -> set[str]:
    """The variable names ``text`` uses; ValueError naming the problem for a malformed template
    (an unclosed brace, a positional ``{}``, an attribute or index such as ``{a.b}``)."""
    if not text:
        return set()
    names: set[str] = set()
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise ValueError(f"malformed {{variable}} in {text[:60]!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or not name.isidentifier():
            raise ValueError(f"{{{name}}} is not a variable name (a contact column such as {{first_name}}; "
                             "write {{ and }} for literal braces)")
        if spec or conversion:
            raise ValueError(f"{{{name}}}: format specs and conversions are not supported")
        names.add(name)
    return names


def fill(text: str | None, variables: Mapping[str, str]) -> str | None:
    """``text`` with each ``{name}`` replaced by ``variables[name]``; KeyError names a missing variable."""
    if text is None:
        return None
    template_fields(text)
    return text.format_map(_Strict(variables))


class _Strict(dict):
    def __init__(self, variables: Mapping[str, str]) -> None:
        super().__init__(variables)

    def __missing__(self, key: str) -> str:
        raise KeyError(f"variable {{{key}}} has no value for this contact")
