"""The configured database as a command opens it, without a server: a command that only reads finds nothing when
no server has created the database yet, and refuses a schema other than the one this voicebot reads; a command
that writes creates or upgrades the database as the server does when it starts."""

from __future__ import annotations

from pathlib import Path

from .database import Store, StoreError


class DatabaseUnavailable(Exception):
    """The database cannot be used by this command; the message says why (password masked)."""


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///…`` URL; None for other databases."""
    return Path(url.split(":///", 1)[1].split("?", 1)[0]) if url.startswith("sqlite") else None


async def open_for_reading(url: str) -> Store | None:
    """The store at its current schema, or None for a SQLite file that does not exist yet."""
    from .migrate import current_revision, head_revision

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    try:
        store = await Store.open(url, migrate=False)
    except StoreError as exc:
        raise DatabaseUnavailable(str(exc)) from None
    current, head = await current_revision(store.engine), head_revision()
    if current != head:
        await store.close()
        raise DatabaseUnavailable(f"the database {store.safe_url} is at schema revision {current or 'none'}, this "
                                  f"voicebot reads {head}: start the server once (it upgrades the schema)")
    return store


async def open_for_writing(url: str) -> Store:
    """The store, created (a SQLite file and its folder) or upgraded to the newest schema if need be."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return await Store.open(url)
    except StoreError as exc:
        raise DatabaseUnavailable(str(exc)) from None
