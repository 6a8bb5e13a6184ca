"""Rights a capability can carry (DESIGN §5). Bits are never renumbered."""

from __future__ import annotations

import enum


class Rights(enum.IntFlag):
    NONE = 0
    SEND = 1 << 0
    RECEIVE = 1 << 1
    GRANT = 1 << 2
    COPY = 1 << 3
    TRANSFER = 1 << 4
    MAP = 1 << 5
    READ = 1 << 6
    WRITE = 1 << 7
    SIGNAL = 1 << 8
    WAIT = 1 << 9
    MANAGE = 1 << 10
    ALL = (1 << 11) - 1


DEFAULT_ENDPOINT_RIGHTS = (
    Rights.SEND | Rights.RECEIVE | Rights.GRANT | Rights.COPY | Rights.TRANSFER | Rights.MANAGE
)
DEFAULT_NOTIFICATION_RIGHTS = (
    Rights.SIGNAL | Rights.WAIT | Rights.COPY | Rights.TRANSFER | Rights.MANAGE
)
DEFAULT_REPLY_RIGHTS = Rights.SEND | Rights.TRANSFER
DEFAULT_MEMORY_RIGHTS = (
    Rights.MAP | Rights.READ | Rights.WRITE | Rights.COPY | Rights.TRANSFER | Rights.MANAGE
)
"""MAP and READ map it read-only; WRITE as well maps it writable."""
DEFAULT_SEMAPHORE_RIGHTS = (
    Rights.SIGNAL | Rights.WAIT | Rights.COPY | Rights.TRANSFER | Rights.MANAGE
)
"""SIGNAL posts, WAIT waits (the notification's verbs, one word per idea)."""
DEFAULT_QUEUE_RIGHTS = (
    Rights.SEND | Rights.RECEIVE | Rights.GRANT | Rights.COPY | Rights.TRANSFER | Rights.MANAGE
)
"""GRANT lets messages sent through it carry capabilities (not queue capabilities)."""
DEFAULT_PIPE_READER_RIGHTS = Rights.READ | Rights.COPY | Rights.TRANSFER | Rights.MANAGE
DEFAULT_PIPE_WRITER_RIGHTS = Rights.WRITE | Rights.COPY | Rights.TRANSFER | Rights.MANAGE
