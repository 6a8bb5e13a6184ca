# Stub for the compiled kernel._core.pipes (see pipes.pyx).
from collections import deque
from typing import Any

from typing_extensions import disjoint_base

from kernel._core.kcore import Core, KernelObject, Pending, ProcCore
from kernel._core.ring import Header

@disjoint_base
class PipeOp(Pending):
    data: memoryview
    written: int
    max_size: int
    def expire(self) -> None: ...

@disjoint_base
class Pipe:
    capacity: int
    owner: Any  # the creating kernel.daemon.process.Proc
    buffer: bytearray
    readers: deque[PipeOp]
    writers: deque[PipeOp]
    reader_alive: bool
    writer_alive: bool
    def __init__(self, capacity: int, owner: Any) -> None: ...
    def flow(self) -> None: ...
    def end_gone(self, reader: bool) -> None: ...

@disjoint_base
class PipeEnd(KernelObject):
    pipe: Pipe
    reader: bool
    def __init__(self, pipe: Pipe, reader: bool) -> None: ...

def pipe_write(k: Core, proc: ProcCore, h: Header) -> None: ...
def pipe_read(k: Core, proc: ProcCore, h: Header) -> None: ...
