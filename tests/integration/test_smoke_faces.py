"""First smoke: both faces against a real daemon (fuller tests live beside this)."""

import asyncio

import pytest

import kernel

pytestmark = pytest.mark.integration


def test_notification_roundtrip_blocking(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        n.signal(0b101)
        assert n.wait(timeout=1.0) == 0b101
        assert n.poll() == 0


async def test_notification_roundtrip_async(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        n = await k.notification()
        await n.signal(6)
        assert await n.wait(timeout=1.0) == 6
        with pytest.raises(TimeoutError):
            await n.wait(timeout=0.05)
        assert type(asyncio.get_running_loop()).__module__.split(".")[0] in ("asyncio", "uvloop")
