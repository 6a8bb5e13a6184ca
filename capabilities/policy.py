"""Permission checks in the style of System V `ipc_perm` (DESIGN §6).

An entry has an owner uid and gid and nine mode bits, owner / group / other, of
which read (4) and write (2) matter. The caller's class comes from its
kernel-verified uid and gid (SO_PEERCRED at connect): the owner class if the
uids match, else the group class if the gids match, else other. Root may do all.
As in Linux's ipcperms(), only the first matching class counts: an owner
without the owner bit is denied even if "other" has it.
"""

from __future__ import annotations

from typing import NamedTuple

READ = 0o4
WRITE = 0o2
_WORDS = {READ: "read", WRITE: "write"}


class Perm(NamedTuple):
    """Who owns an entry and what the mode allows."""

    uid: int
    gid: int
    mode: int


_CLASSES = {6: "owner", 3: "group", 0: "other"}


def _class_shift(perm: Perm, uid: int, gid: int) -> int:
    """Where the caller's class's bits sit in the mode: the first class that matches."""
    return 6 if uid == perm.uid else 3 if gid == perm.gid else 0


def caller_class(perm: Perm, uid: int, gid: int) -> str:
    return _CLASSES[_class_shift(perm, uid, gid)]


def allowed(perm: Perm, uid: int, gid: int, want: int) -> bool:
    """May a caller with this uid/gid do `want` (READ or WRITE)? (Runs on every lookup.)"""
    if uid == 0:
        return True
    return (perm.mode >> _class_shift(perm, uid, gid)) & want == want


def denial(perm: Perm, uid: int, gid: int, want: int, what: str) -> str | None:
    """None if allowed, else a sentence saying which permission is missing."""
    if allowed(perm, uid, gid, want):
        return None
    who = caller_class(perm, uid, gid)
    return (
        f"{what} needs {_WORDS[want]} permission, which mode {perm.mode:#o} does not give "
        f"to uid {uid} gid {gid} (class {who}; owner uid {perm.uid} gid {perm.gid})"
    )


def check_mode(mode: object) -> int:
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be an integer in 0o000..0o777, not {mode!r}")
    return mode
