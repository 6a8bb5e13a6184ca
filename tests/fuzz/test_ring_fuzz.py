"""Fuzz the consumer side of the ring with a hostile producer's bytes.

Whatever the producer writes into the data area and publishes as its tail,
Ring.read() must either return None (nothing published), return a Header that
is consistent and lies inside the ring and inside the published data, or raise
RingCorruptError. The data area is fenced by PROT_NONE guard pages, so reading
outside it crashes the run rather than passing silently.
"""

from __future__ import annotations

import ctypes
import mmap
import random
import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kernel import abi
from kernel._core.ring import Ring, RingCorruptError

SIZE = 4096
PAGE = mmap.PAGESIZE
PROT_NONE = 0
HDR = struct.Struct("<IHHQQIiqQQIIII")
U64 = struct.Struct("<Q")
U64_MAX = 2**64 - 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

_CONTROL = -(-abi.CONTROL_SIZE // PAGE) * PAGE
DATA_OFF = _CONTROL + PAGE  # [control][guard][data][guard]


def _guarded_region() -> mmap.mmap:
    mm = mmap.mmap(-1, DATA_OFF + SIZE + PAGE)
    anchor = ctypes.c_char.from_buffer(mm)
    base = ctypes.addressof(anchor)
    for off in (_CONTROL, DATA_OFF + SIZE):
        if _libc.mprotect(base + off, PAGE, PROT_NONE) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
    del anchor
    return mm


def align8(n: int) -> int:
    return (n + 7) & ~7


# ------------------------------------------------------------------ strategies

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def record(draw, pos: int) -> bytes:
    """Bytes of one would-be record at `pos`: mostly well formed, often subtly not."""
    to_end = SIZE - pos
    kind = draw(st.sampled_from(["good", "good", "pad", "bad_pad", "mutated", "random"]))
    if kind == "random":
        return draw(st.binary(min_size=8, max_size=min(256, to_end)))
    if kind in ("pad", "bad_pad"):
        size = to_end if kind == "pad" else draw(st.one_of(u32, st.integers(0, SIZE)))
        return struct.pack("<IHH", size, 0, draw(u16))
    ncaps = draw(st.one_of(st.integers(0, 4), st.integers(0, abi.MAX_CAPS_PER_RECORD)))
    payload_len = draw(st.one_of(st.integers(0, 200), st.integers(0, SIZE // 2)))
    size = align8(abi.HDR_SIZE + 8 * ncaps + payload_len) & 0xFFFFFFFF
    opcode = draw(st.integers(1, 0xFFFF))
    if kind == "mutated":
        field = draw(st.sampled_from(["size", "ncaps", "payload_len", "opcode"]))
        if field == "size":
            size = draw(st.one_of(u32, st.integers(max(0, size - 16), size + 16)))
        elif field == "ncaps":
            ncaps = draw(st.one_of(st.integers(0, 70), u16))
        elif field == "payload_len":
            payload_len = draw(st.one_of(u32, st.integers(0, payload_len + 16)))
        else:
            opcode = 0
    hdr = HDR.pack(
        size,
        opcode,
        ncaps,
        draw(st.integers(0, 2**64 - 1)),
        draw(st.integers(0, 2**64 - 1)),
        payload_len,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    )
    body_len = max(0, min(size, to_end, 512) - abi.HDR_SIZE)
    return hdr + draw(st.binary(min_size=0, max_size=body_len))


@st.composite
def hostile_ring(draw):
    """(data area bytes, initial head, published tail)"""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    data = bytearray(rnd.randbytes(SIZE) if draw(st.booleans()) else bytes(SIZE))
    lap = draw(st.sampled_from([0, 1, 7, (U64_MAX + 1) // SIZE - 1]))
    head_pos = draw(
        st.one_of(
            st.integers(0, SIZE // 8 - 1).map(lambda i: i * 8),
            st.sampled_from([0, SIZE - 8, SIZE - 64, SIZE - 72, SIZE - 80]),
        )
    )
    head = (lap * SIZE + head_pos) & U64_MAX

    # Lay out up to a few records from the head on, wrapping like a producer would.
    pos, written = head_pos, 0
    for _ in range(draw(st.integers(1, 4))):
        raw = draw(record(pos))
        raw = raw[: SIZE - pos]
        data[pos : pos + len(raw)] = raw
        size = struct.unpack_from("<I", raw)[0] if len(raw) >= 4 else 8
        step = align8(max(size, 8))
        if step > SIZE or written + step > SIZE:
            break
        written += step
        pos = (pos + step) % SIZE

    tail = (
        draw(
            st.one_of(
                st.just(head + written),  # what was laid out
                st.just(head + written),
                st.integers(0, SIZE // 8).map(lambda i: head + 8 * i),  # any aligned amount
                st.integers(-16, SIZE + 16).map(lambda d: head + d),  # off by a little
                st.integers(0, U64_MAX),  # anything at all
            )
        )
        & U64_MAX
    )
    return bytes(data), head, tail


# ------------------------------------------------------------------ the property


def check_header(mm: mmap.mmap, cons: Ring, h, tail: int) -> None:
    head = U64.unpack_from(mm, abi.OFF_SQ_HEAD)[0]  # after any pads the read skipped
    pos = head % SIZE
    avail = (tail - head) & U64_MAX
    assert h.opcode != abi.Op.PAD
    assert 0 <= h.ncaps <= abi.MAX_CAPS_PER_RECORD
    assert h.size == align8(abi.HDR_SIZE + 8 * h.ncaps + h.payload_len)
    assert h.size % 8 == 0
    assert abi.HDR_SIZE <= h.size <= avail <= SIZE
    assert pos + h.size <= SIZE  # never straddles the end
    raw = bytes(mm[DATA_OFF + pos : DATA_OFF + pos + h.size])
    fields = HDR.unpack_from(raw)
    assert (fields[0], fields[1], fields[2], fields[3], fields[5]) == (
        h.size,
        h.opcode,
        h.ncaps,
        h.req_id,
        h.payload_len,
    )
    caps_end = abi.HDR_SIZE + 8 * h.ncaps
    assert cons.caps(h) == struct.unpack_from(f"<{h.ncaps}Q", raw, abi.HDR_SIZE)
    assert cons.payload(h) == raw[caps_end : caps_end + h.payload_len]


def check_skipped_pads(mm: mmap.mmap, before: int, after: int) -> None:
    """Every byte the consumer skipped without returning it was a well-formed pad."""
    while before != after:
        pos = before % SIZE
        size, opcode = struct.unpack_from("<IH", mm, DATA_OFF + pos)
        assert opcode == abi.Op.PAD
        assert size == SIZE - pos
        before = (before + size) & U64_MAX


@given(hostile_ring())
@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_read_returns_a_consistent_record_or_raises_ring_corrupt(case):
    data, head, tail = case
    mm = _guarded_region()
    cons = None
    try:
        mm[DATA_OFF : DATA_OFF + SIZE] = data
        U64.pack_into(mm, abi.OFF_SQ_HEAD, head)
        cons = Ring(mm, DATA_OFF, SIZE, abi.OFF_SQ_TAIL, abi.OFF_SQ_HEAD, abi.OFF_SQ_WAITING)
        U64.pack_into(mm, abi.OFF_SQ_TAIL, tail)  # published after the consumer started
        for _ in range(8):
            before = U64.unpack_from(mm, abi.OFF_SQ_HEAD)[0]
            try:
                h = cons.read()
            except RingCorruptError as e:
                event(f"corrupt: {str(e).split(' ')[0]}")
                check_skipped_pads(mm, before, U64.unpack_from(mm, abi.OFF_SQ_HEAD)[0])
                return
            after = U64.unpack_from(mm, abi.OFF_SQ_HEAD)[0]
            check_skipped_pads(mm, before, after)
            if after != before:
                event("skipped a pad")
            event("empty" if h is None else "record returned")
            if h is None:
                assert after == tail
                return
            check_header(mm, cons, h, tail)
            cons.consume(h)
            assert U64.unpack_from(mm, abi.OFF_SQ_HEAD)[0] == (after + h.size) & U64_MAX
    finally:
        if cons is not None:
            cons.close()
        mm.close()


@given(
    data=st.binary(min_size=0, max_size=SIZE),
    start=st.integers(0, SIZE // 8 - 1),
    tail_delta=st.integers(0, 2 * SIZE),
)
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_read_of_raw_random_bytes_never_escapes_the_ring(data, start, tail_delta):
    mm = _guarded_region()
    cons = None
    try:
        mm[DATA_OFF : DATA_OFF + len(data)] = data
        head = start * 8
        U64.pack_into(mm, abi.OFF_SQ_HEAD, head)
        cons = Ring(mm, DATA_OFF, SIZE, abi.OFF_SQ_TAIL, abi.OFF_SQ_HEAD, abi.OFF_SQ_WAITING)
        U64.pack_into(mm, abi.OFF_SQ_TAIL, head + tail_delta)
        try:
            h = cons.read()
        except RingCorruptError:
            return
        if h is not None:
            check_header(mm, cons, h, head + tail_delta)
    finally:
        if cons is not None:
            cons.close()
        mm.close()
