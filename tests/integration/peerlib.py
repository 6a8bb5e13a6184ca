"""Helpers the integration tests share: where the peer scripts live, and a spawned
peer that is always killed and reaped."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import kernel

PEERS = Path(__file__).parent / "peers"


@contextlib.contextmanager
def spawned(k: kernel.Kernel, script: str, *args: str, **caps) -> Iterator[kernel.Process]:
    """Run peers/<script> with `caps` inherited; kill and reap it on the way out."""
    proc = k.spawn([sys.executable, str(PEERS / script), *args], caps=caps)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
