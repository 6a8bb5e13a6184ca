"""The kernel ABI in one place (STYLE §1).

Two halves:
- the binary record header and opcode numbers of the per-message path, declared
  as a C struct in ``kernel/_core/ring.pxd`` and mirrored here for readers;
- msgspec structs for what is not per-message: the bootstrap handshake.

Numbers are never reused; a retired number stays reserved in a comment.
"""

from __future__ import annotations

import enum
import struct

import msgspec

ABI_VERSION = 1

# Mirror of ring.pxd (tests/unit/test_layout.py checks the two agree).
HDR_SIZE = 72
CONTROL_SIZE = 4096
OFF_SQ_TAIL, OFF_SQ_HEAD, OFF_SQ_WAITING = 64, 128, 192
OFF_CQ_TAIL, OFF_CQ_HEAD, OFF_CQ_WAITING = 256, 320, 384
OFF_CQ_ROOM = 448  # a session's region: its server keeps replies back for want of room
OFF_SESSIONS, MAX_SESSIONS = 2048, 256
OFF_CALLS, MAX_TRACKED_CALLS = 2048, 256  # in a session's region
MAX_CAPS_PER_RECORD = 64
RING_MAGIC = b"MKIPCRNG"

RING_SIZE = 1 << 20
"""Bytes of data in each ring of a process (SQ and CQ); the client backs every page
when it maps them (ring.prefault)."""

MAX_PAYLOAD = 256 * 1024
"""Largest message payload in bytes; a larger one raises MessageTooLargeError."""

MAX_TRANSFER = 8
"""Capability words one message can carry (a minted transfer takes two); the kinds
of what is delivered fit 4 bits each in the flags word."""

TRANSFER_COPY = 1 << 63
"""In a submitted cap list: send a copy of this slot instead of moving it."""

TRANSFER_MINT = 1 << 62
"""In a submitted cap list: send a child of this slot with the rights in bits 48..58
of the word and the badge in the next word (two words, one capability). The name
server hands out badged capabilities this way in the reply itself: no CAP_MINT
round trip first (Zircon's handle dispositions set rights in transit likewise)."""
TRANSFER_RIGHTS_SHIFT = 48
TRANSFER_SAME_RIGHTS = 1 << 59  # in a minted transfer: keep the source's rights
TRANSFER_SLOT_MASK = (1 << 48) - 1  # slots are 32-bit generation << 16 | 16-bit index

REPLY_KEPT = 1
"""In a failed REPLY / REPLY_RECV completion's `arg`: the reply capability is still held
(the kernel refused before consuming it), so the call can be answered again."""

DEADLINE_FOREVER = -1
DEADLINE_NOW = 0


class Op(enum.IntEnum):
    """Opcodes of ring records. A completion echoes its request's opcode."""

    PAD = 0  # ring framing only: skip to the end of the data area
    # endpoints 10-19
    ENDPOINT_SEND = 10
    ENDPOINT_CALL = 11
    ENDPOINT_RECV = 12
    ENDPOINT_REPLY = 13
    ENDPOINT_REPLY_RECV = 14
    ENDPOINT_SESSION_OPEN = 15
    ENDPOINT_SESSION_ACCEPT = 16
    SESSION_CLOSE = 17
    ENDPOINT_SESSION_DECLINE = 18
    # notifications 20-29
    NOTIFICATION_SIGNAL = 20
    NOTIFICATION_WAIT = 21
    NOTIFICATION_POLL = 22
    NOTIFICATION_BIND = 23  # slot: the endpoint, arg: the notification
    NOTIFICATION_UNBIND = 24  # slot: the endpoint
    # objects and capabilities 30-39
    ENDPOINT_CREATE = 30
    NOTIFICATION_CREATE = 31
    CAP_CLOSE = 32
    CAP_COPY = 33
    CAP_MINT = 34
    CAP_REVOKE = 35
    CAP_INFO = 36
    # processes 40-49
    INHERIT_CREATE = 40
    PROCESS_WAIT = 41
    CANCEL = 42
    CALLER_MONITOR = 43
    CALL_MONITOR = 44
    PROCESS_MONITOR = 45  # slot: a notification, arg: bits, payload: a child's pid (8 bytes)
    KERNEL_STATUS = 46  # answer: KernelStatus (msgpack)
    # memory objects 50-59
    MEMORY_CREATE = 50
    MEMORY_MAP = 51
    MEMORY_SIZE = 52
    # semaphores 60-69
    SEMAPHORE_CREATE = 60
    SEMAPHORE_POST = 61
    SEMAPHORE_WAIT = 62
    # message queues 70-79
    QUEUE_CREATE = 70
    QUEUE_SEND = 71
    QUEUE_RECV = 72
    # pipes 80-89
    PIPE_CREATE = 80
    PIPE_WRITE = 81
    PIPE_READ = 82


class ObjectKind(enum.IntEnum):
    ENDPOINT = 1
    NOTIFICATION = 2
    REPLY = 3
    MEMORY = 4
    SEMAPHORE = 5
    QUEUE = 6
    PIPE_READER = 7
    PIPE_WRITER = 8


# Flags of a received message's completion (Header.arg).
MSG_IS_CALL = 1
MSG_FROM_KERNEL = 2
"""The kernel itself sent the message (e.g. a CALLER_MONITOR exit notice); its
sender pid is 0. Only the kernel writes `arg`, so no process can forge this."""
MSG_SESSION_OFFER = 4
"""With MSG_FROM_KERNEL: a caller asks for a direct session (ENDPOINT_SESSION_OPEN);
the payload is a SessionOffer, the badge that of the caller's capability."""
MSG_SIGNAL = 8
"""With MSG_FROM_KERNEL: the signal word of the notification bound to the endpoint
(NOTIFICATION_BIND), taken and cleared, in the badge (seL4's bound notification);
no payload."""

SESSION_RING_SIZE = 1 << 20
"""Bytes of data in each direction of a direct session (both ends back every page
when they map it: ring.prefault)."""
SESSION_OPEN, SESSION_FREE = 1, 0
"""Values of a session state word (ring.pxd); an ended session holds its Status (< 0)."""

MAP_AS_ALLOWED, MAP_READ_ONLY, MAP_WRITABLE = 0, 1, 2
"""MEMORY_MAP's `arg`: writable if the capability has WRITE, read-only, or writable."""
MAX_MEMORY_SIZE = 1 << 30
"""Largest memory object in bytes (1 GiB)."""
MAX_MEMORY_BYTES = 4 << 30
"""Bytes of memory objects one process may have created and not yet seen destroyed."""
MAX_SEMAPHORE_VALUE = (1 << 63) - 1
"""A semaphore's count never exceeds this; a post past it fails (POSIX EOVERFLOW)."""

MAX_HELD_BYTES = 64 << 20
"""Payload bytes of one process's sends waiting in the kernel (kcore.pyx mirrors it)."""

QUEUE_UNBOUNDED = (1 << 64) - 1
"""QUEUE_CREATE `arg`: no bound on the number of messages, only on their bytes."""
MAX_QUEUE_CAPACITY = 1 << 16
"""Messages a bounded queue may be made to hold."""
MAX_QUEUE_BYTES = 64 << 20
"""A queue's `max_bytes` at most; each stored message counts 64 bytes beyond its payload."""
MAX_RESERVED_BYTES = 256 << 20
"""Kernel buffer space one process's queues (`max_bytes`) and pipes (`capacity`) that
still exist may reserve, added up: reserved at creation, as System V's msg_qbytes."""

# Per-user bounds (kernel/daemon/quota.py): what one uid's processes may keep in the
# kernel together, whatever their number. They bound the kernel's heap and its
# descriptors (a connection holds four, a session two, a memory object one).
MAX_CONNECTIONS_PER_UID = 256
MAX_SESSIONS_PER_UID = 1024
MAX_OBJECTS_PER_UID = 1 << 16
"""Kernel objects of every kind (but one-shot replies) created by one uid that live on."""
MAX_MEMORY_OBJECTS_PER_UID = 1024
MAX_RESERVED_BYTES_PER_UID = 1 << 30
MAX_MEMORY_BYTES_PER_UID = 16 << 30
MAX_WATCHED_PROCESSES_PER_UID = 1024
MAX_WATCHED_PROCESSES = 256
"""Child processes one process may have the kernel watch for their end
(PROCESS_MONITOR) at once; each watch holds a descriptor (a pidfd) in the kernel."""
NAMES_STORE_MESSAGES = 4096
NAMES_STORE_BYTES = 4 << 20
"""The queue the kernel keeps for the name server across its restarts (its entries,
each a message carrying the registered capability): the kernel's own, charged to
nobody, and larger than the name server's table can fill."""
MAX_QUEUE_TYPE = (1 << 63) - 1
"""Message types are 1 to this (System V's mtype is a positive long)."""
QUEUE_RECV_PARAMS = struct.Struct("<qQQ")
"""QUEUE_RECV's payload: the selector (msgrcv's msgtyp), max_size, flags."""
QUEUE_TRUNCATE = 1
"""QUEUE_RECV flag: cut a message longer than max_size (System V's MSG_NOERROR)."""
QUEUE_EXCEPT = 2
"""QUEUE_RECV flag: with a selector t > 0, take the first message NOT of type t."""


PIPE_CAPACITY = 64 << 10
"""A pipe's default buffer size (Linux's)."""
MAX_PIPE_CAPACITY = 16 << 20
"""A pipe's buffer is PIPE_BUF to this many bytes (at least PIPE_BUF, as Linux's one
page, so that an atomic write always fits)."""
PIPE_BUF = 4096
"""A pipe write of at most this many bytes is atomic: never interleaved with another
writer's, and never split by a timeout (POSIX PIPE_BUF)."""


def queue_selects(mtype: int, selector: int, flags: int) -> bool:
    """Would a QUEUE_RECV with `selector` and `flags` take a message of type `mtype`?
    As msgrcv(2): 0 any; t > 0 type t (QUEUE_EXCEPT: any other); t < 0 any type <= |t|
    (the receive then takes the first of the lowest such type)."""
    if selector == 0:
        return True
    if selector > 0:
        return (mtype != selector) if flags & QUEUE_EXCEPT else mtype == selector
    return mtype <= -selector


NAMES_SLOT = 0x10001
"""The well-known slot of every process's capability to the name server (DESIGN §2):
the first capability the kernel puts in a new table. 0 in Welcome: no name server."""


class InheritedCap(msgspec.Struct, frozen=True):
    slot: int
    kind: str
    rights: int


RIGHTS_SAME = (1 << 64) - 1
"""CAP_COPY / CAP_MINT `arg`: keep exactly the rights the source holds."""


class CapInfo(msgspec.Struct, frozen=True, array_like=True):
    """CAP_INFO's answer: what a person debugging a capability wants to see."""

    kind: str
    rights: int
    badge: int
    slot: int
    object_id: int
    object_caps: int  # capabilities naming the object, in every process
    derived: int  # capabilities derived from this one, at any depth, anywhere
    parent_slot: int | None  # what it was derived from, if that is in this process


_info_decoder = msgspec.msgpack.Decoder(CapInfo)
_info_encoder = msgspec.msgpack.Encoder()


def encode_info(info: CapInfo) -> bytes:
    return _info_encoder.encode(info)


def decode_info(data: bytes) -> CapInfo:
    info: CapInfo = _info_decoder.decode(data)
    return info


class Hello(msgspec.Struct, tag=True):
    """First frame from a process on the bootstrap socket."""

    version: int
    inherit_token: str | None = None


class Welcome(msgspec.Struct, tag=True):
    """The kernel's answer, sent with the memfd and both eventfds (SCM_RIGHTS)."""

    version: int
    pid: int
    uid: int
    gid: int
    region_size: int
    sq_size: int
    cq_size: int
    max_payload: int
    inherited: dict[str, InheritedCap] = {}
    names_slot: int = 0


class MemoryFd(msgspec.Struct, tag=True):
    """The descriptor of a memory object, sent with SCM_RIGHTS just before the
    MEMORY_MAP completion of request `req_id`: read-write if the capability had
    WRITE, otherwise opened read-only (it cannot be mapped writable)."""

    req_id: int
    writable: bool


class Refused(msgspec.Struct, tag=True):
    reason: str
    status: int = -10  # errors.Status: INVALID_ARGS, ACCESS_DENIED, NO_RESOURCES


class SessionFds(msgspec.Struct, tag=True):
    """The descriptors of session `sid` (its memfd, the caller's doorbell, the
    server's doorbell), sent with SCM_RIGHTS just before the completion that opens
    or accepts it. After the handshake the kernel sends only these and MemoryFd."""

    sid: int


class SessionOffer(msgspec.Struct, frozen=True, array_like=True):
    """Payload of a MSG_SESSION_OFFER: who asks (kernel-verified) for session `sid`."""

    sid: int
    pid: int
    uid: int
    gid: int
    sender_id: int


class SessionGrant(msgspec.Struct, frozen=True, array_like=True):
    """Payload of a successful ENDPOINT_SESSION_OPEN / _ACCEPT (arg: the state word's
    index): the session, its ring size, and the kernel-verified peer."""

    sid: int
    ring_size: int
    pid: int
    uid: int
    gid: int
    sender_id: int


class ProcessStatus(msgspec.Struct, frozen=True):
    """One connected process, as KERNEL_STATUS shows it."""

    conn: int  # its connection id (Message.sender_id)
    pid: int
    uid: int
    gid: int
    parent: int  # the connection that spawned it (0: none, or gone)
    name_server: bool
    caps: dict[str, int]  # capabilities in its table, by kind
    pending: int  # its operations waiting in the kernel
    sessions: int
    spawned: int  # processes it spawned and has not waited for
    watched: int  # child processes it has the kernel watch (Process.monitor)


class ObjectStatus(msgspec.Struct, frozen=True):
    """One object in the tables of the processes shown (KERNEL_STATUS): who holds
    it, and what it holds and has waiting, as ipcs -q shows a queue's messages."""

    oid: int  # CapInfo.object_id
    kind: str
    holders: list[int]  # the connections shown that hold a capability to it
    caps: int  # capabilities naming it, in every process
    state: dict[str, int]  # by kind: messages, bytes, buffered, value, waiting ops...


class UserStatus(msgspec.Struct, frozen=True):
    """One uid's ledger (kernel/daemon/quota.py): what it holds, against its bounds."""

    uid: int
    used: dict[str, int]
    limits: dict[str, int]


class KernelStatus(msgspec.Struct, frozen=True):
    """KERNEL_STATUS's answer (`mkipc status`, the kernel's ipcs). Root and the
    kernel's own uid see every process and uid; any other uid sees its own."""

    pid: int
    uid: int
    uptime_s: float
    live_objects: int  # every uid's
    processes: list[ProcessStatus]
    hidden: int  # connected processes not listed (other uids', or past the list's bound)
    users: list[UserStatus]
    descriptors: int = 0  # the kernel's, held for all uids (quota.py DESCRIPTORS)
    descriptor_limit: int = -1  # -1: not bounded
    descriptor_reserve: int = 0  # of the limit, kept for root and the kernel's uid
    objects: list[ObjectStatus] = []  # reachable from the processes shown
    objects_hidden: int = 0  # past the list's bound


_status_encoder = msgspec.msgpack.Encoder()
_status_decoder = msgspec.msgpack.Decoder(KernelStatus)


def encode_status(status: KernelStatus) -> bytes:
    return _status_encoder.encode(status)


def decode_status(data: bytes) -> KernelStatus:
    status: KernelStatus = _status_decoder.decode(data)
    return status


Handshake = Hello | Welcome | Refused | SessionFds | MemoryFd
HANDSHAKE_MAX = 64 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Handshake)


def encode_frame(msg: Handshake) -> bytes:
    body = _encoder.encode(msg)
    return len(body).to_bytes(4, "little") + body


def decode_frame(body: bytes) -> Handshake:
    msg: Handshake = _decoder.decode(body)
    return msg


_names_decoder = msgspec.msgpack.Decoder(list[str])
_offer_decoder = msgspec.msgpack.Decoder(SessionOffer)
_grant_decoder = msgspec.msgpack.Decoder(SessionGrant)


def encode_struct(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_offer(data: bytes) -> SessionOffer:
    offer: SessionOffer = _offer_decoder.decode(data)
    return offer


def decode_grant(data: bytes) -> SessionGrant:
    grant: SessionGrant = _grant_decoder.decode(data)
    return grant


def encode_names(names: list[str]) -> bytes:
    return _encoder.encode(names)


def decode_names(data: bytes) -> list[str]:
    return _names_decoder.decode(data)
