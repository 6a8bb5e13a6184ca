"""kernel/abi.py mirrors the layout declared in kernel/_core/ring.pxd; they must agree.

ring.pxd is parsed as text (it is the source of truth the extension is compiled
from); the parsed struct is then checked against bytes the compiled ring writes.
"""

from __future__ import annotations

import ctypes
import mmap
import re
import struct
from pathlib import Path

import pytest

from kernel import abi
from kernel._core.ring import Ring

PXD = Path(abi.__file__).resolve().parent / "_core" / "ring.pxd"

# C type -> (struct format char, ctypes type)
C_TYPES = {
    "uint8_t": ("B", ctypes.c_uint8),
    "uint16_t": ("H", ctypes.c_uint16),
    "int16_t": ("h", ctypes.c_int16),
    "uint32_t": ("I", ctypes.c_uint32),
    "int32_t": ("i", ctypes.c_int32),
    "uint64_t": ("Q", ctypes.c_uint64),
    "int64_t": ("q", ctypes.c_int64),
}

CACHE_LINE = 64


def _block(text: str, opener: str) -> list[str]:
    """The indented lines of the block that starts with `opener` (comments stripped)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == opener)
    body = []
    for line in lines[start + 1 :]:
        if line.strip() and not line.startswith((" ", "\t")):
            break
        code = line.split("#", 1)[0].strip()
        if code:
            body.append(code)
    return body


@pytest.fixture(scope="module")
def pxd_text() -> str:
    return PXD.read_text()


@pytest.fixture(scope="module")
def pxd_enum(pxd_text) -> dict[str, int]:
    out = {}
    for code in _block(pxd_text, "cdef enum:"):
        m = re.fullmatch(r"(\w+)\s*=\s*(\d+)", code)
        assert m, f"unexpected enum line in ring.pxd: {code!r}"
        out[m[1]] = int(m[2])
    return out


@pytest.fixture(scope="module")
def mk_hdr_fields(pxd_text) -> list[tuple[str, str]]:
    fields = []
    for code in _block(pxd_text, "ctypedef struct mk_hdr:"):
        m = re.fullmatch(r"(\w+)\s+(\w+)", code)
        assert m, f"unexpected mk_hdr line in ring.pxd: {code!r}"
        assert m[1] in C_TYPES, f"mk_hdr field {m[2]} has unhandled type {m[1]}"
        fields.append((m[2], m[1]))
    return fields


@pytest.mark.parametrize(
    "name",
    [
        "HDR_SIZE",
        "CONTROL_SIZE",
        "OFF_SQ_TAIL",
        "OFF_SQ_HEAD",
        "OFF_SQ_WAITING",
        "OFF_CQ_TAIL",
        "OFF_CQ_HEAD",
        "OFF_CQ_WAITING",
        "OFF_CQ_ROOM",
        "OFF_SESSIONS",
        "MAX_SESSIONS",
        "OFF_CALLS",
        "MAX_TRACKED_CALLS",
        "MAX_CAPS_PER_RECORD",
    ],
)
def test_abi_constant_matches_ring_pxd(pxd_enum, name):
    assert getattr(abi, name) == pxd_enum[name]


def test_pad_opcode_matches_ring_pxd(pxd_enum):
    assert abi.Op.PAD == pxd_enum["OP_PAD"] == 0


def test_every_pxd_constant_is_mirrored(pxd_enum):
    mirrored = {name for name in pxd_enum if hasattr(abi, name)} | {"OP_PAD"}
    assert mirrored == set(pxd_enum)


def test_mk_hdr_fields_are_naturally_aligned_without_padding_and_add_up_to_hdr_size(
    mk_hdr_fields, pxd_enum
):
    offset = 0
    for name, ctype in mk_hdr_fields:
        width = struct.calcsize(C_TYPES[ctype][0])
        assert offset % width == 0, f"{name} at {offset} is not {width}-aligned (hidden padding)"
        offset += width
    assert offset == pxd_enum["HDR_SIZE"] == abi.HDR_SIZE == 72

    class MkHdr(ctypes.Structure):
        _fields_ = [(name, C_TYPES[ctype][1]) for name, ctype in mk_hdr_fields]

    assert ctypes.sizeof(MkHdr) == abi.HDR_SIZE  # the C compiler's view, trailing padding too
    assert ctypes.alignment(MkHdr) == 8
    assert abi.HDR_SIZE % 8 == 0  # records are 8-aligned, so the header keeps them aligned


def test_mk_hdr_field_order(mk_hdr_fields):
    assert [name for name, _ in mk_hdr_fields] == [
        "size",
        "opcode",
        "ncaps",
        "req_id",
        "slot",
        "payload_len",
        "status",
        "deadline",
        "arg",
        "badge",
        "flags",
        "pid",
        "uid",
        "gid",
    ]


def test_compiled_ring_writes_the_header_the_pxd_declares(mk_hdr_fields):
    fmt = "<" + "".join(C_TYPES[ctype][0] for _, ctype in mk_hdr_fields)
    assert struct.calcsize(fmt) == abi.HDR_SIZE
    mm = mmap.mmap(-1, abi.CONTROL_SIZE + 4096)
    ring = Ring(mm, abi.CONTROL_SIZE, 4096, abi.OFF_SQ_TAIL, abi.OFF_SQ_HEAD, abi.OFF_SQ_WAITING)
    try:
        assert ring.complete(
            0x1234,
            0x0102030405060708,
            -7,
            slot=0x0A0B0C0D0E0F1011,
            arg=0x1112131415161718,
            payload=b"hello",
            caps=(0xC0FFEE, 9),
            badge=0x2122232425262728,
            pid=31,
            uid=32,
            gid=33,
        )
        raw = bytes(mm[abi.CONTROL_SIZE : abi.CONTROL_SIZE + abi.HDR_SIZE])
        got = dict(zip([name for name, _ in mk_hdr_fields], struct.unpack(fmt, raw), strict=True))
        assert got == {
            "size": 96,
            "opcode": 0x1234,
            "ncaps": 2,
            "req_id": 0x0102030405060708,
            "slot": 0x0A0B0C0D0E0F1011,
            "payload_len": 5,
            "status": -7,
            "flags": 0,
            "deadline": 0,
            "arg": 0x1112131415161718,
            "badge": 0x2122232425262728,
            "pid": 31,
            "uid": 32,
            "gid": 33,
        }
        body = bytes(mm[abi.CONTROL_SIZE + abi.HDR_SIZE : abi.CONTROL_SIZE + 96])
        assert body == struct.pack("<QQ", 0xC0FFEE, 9) + b"hello" + bytes(3)
        assert struct.unpack_from("<Q", mm, abi.OFF_SQ_TAIL)[0] == 96

        assert ring.submit(7, 1, 2, -5, 3, b"")
        raw = bytes(mm[abi.CONTROL_SIZE + 96 : abi.CONTROL_SIZE + 96 + abi.HDR_SIZE])
        got = dict(zip([name for name, _ in mk_hdr_fields], struct.unpack(fmt, raw), strict=True))
        assert (got["deadline"], got["opcode"], got["req_id"], got["slot"], got["arg"]) == (
            -5,
            7,
            1,
            2,
            3,
        )
    finally:
        ring.close()
        mm.close()


OFFSETS = [
    "OFF_SQ_TAIL",
    "OFF_SQ_HEAD",
    "OFF_SQ_WAITING",
    "OFF_CQ_TAIL",
    "OFF_CQ_HEAD",
    "OFF_CQ_WAITING",
    "OFF_CQ_ROOM",
]


def test_each_index_and_waiting_flag_has_its_own_cache_line():
    offsets = [getattr(abi, name) for name in OFFSETS]
    lines = [off // CACHE_LINE for off in offsets]
    assert len(set(lines)) == len(lines)
    assert 0 not in lines  # line 0 holds magic, version and the ring sizes
    for name, off in zip(OFFSETS, offsets, strict=True):
        width = 4 if "WAITING" in name else 8
        assert off % width == 0, f"{name} is not {width}-aligned"
        assert off % CACHE_LINE + width <= CACHE_LINE, f"{name} straddles a cache line"
        assert off + width <= abi.CONTROL_SIZE, f"{name} is outside the control page"


def test_control_area_precedes_page_aligned_ring_data():
    assert abi.CONTROL_SIZE % mmap.PAGESIZE == 0 or mmap.PAGESIZE % abi.CONTROL_SIZE == 0
    assert abi.CONTROL_SIZE >= (max(getattr(abi, name) for name in OFFSETS) + CACHE_LINE)
    assert abi.RING_SIZE >= 4096
    assert abi.RING_SIZE & (abi.RING_SIZE - 1) == 0


def test_largest_message_fits_in_half_a_ring():
    worst = abi.HDR_SIZE + 4 * abi.MAX_CAPS_PER_RECORD + abi.MAX_PAYLOAD
    assert (worst + 7) & ~7 <= abi.RING_SIZE // 2


def test_region_comment_in_pxd_agrees_with_the_offsets(pxd_text):
    # The ASCII table at the top of ring.pxd: "#   64      8     SQ tail ..."
    table = {}
    for m in re.finditer(
        r"^#\s+(\d+)\s+(\d+|\.\.\.)\s+(SQ|CQ) (tail|head|waiting|room)\b", pxd_text, re.M
    ):
        table[f"OFF_{m[3]}_{m[4].upper()}"] = int(m[1])
    assert table == {name: getattr(abi, name) for name in OFFSETS}
    assert re.search(rf"^#\s+{abi.CONTROL_SIZE}\s+\.\.\.\s+SQ data", pxd_text, re.M)
    assert abi.RING_MAGIC.decode() in pxd_text
