# Stub for the compiled kernel._core.serve (see serve.pyx).
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgspec
from typing_extensions import disjoint_base

class _Route(Protocol):
    @property
    def func(self) -> Callable[..., Any]: ...
    @property
    def with_ctx(self) -> bool: ...

@disjoint_base
class Slots:
    def __init__(self, n: int) -> None: ...
    def take(self) -> None: ...
    def give(self) -> None: ...

def encode_ok(
    encode_into: Callable[[Any, bytearray, int], None],
    result: Any,
    buf: bytearray,
    max_payload: int,
) -> bytearray: ...

@disjoint_base
class Answerer:
    def __init__(
        self,
        decoder: msgspec.msgpack.Decoder[Any],
        routes: Mapping[type[msgspec.Struct], _Route],
        encoder: msgspec.msgpack.Encoder,
        context: Callable[[Any], object],
        bad_request: Callable[[msgspec.MsgspecError], bytes],
        raised: Callable[[Exception, Any], bytes],
        max_payload: int,
    ) -> None: ...
    def answer(self, msg: Any, buf: bytearray) -> bytes | bytearray: ...

@disjoint_base
class SessionAnswers:
    def __init__(
        self, answerer: Answerer, slots: Slots, log: logging.Logger, name: str
    ) -> None: ...
    def handle(self, msg: Any, buf: bytearray) -> None: ...
    def handle_one(self, msg: Any, buf: bytearray, worker: int) -> BaseException | None: ...
    def handle_batch(
        self, batch: list[Any], buf: bytearray, worker: int
    ) -> BaseException | None: ...
