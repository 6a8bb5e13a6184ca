"""Memory objects: shared memory that only capability holders can map (DESIGN §4)."""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time

import pytest
from peerlib import PEERS, ROOT, readme_script, run_script, spawned

import kernel
from kernel import Rights, abi
from kernel.abi import Op

pytestmark = pytest.mark.integration

MAP_RO = Rights.MAP | Rights.READ


def test_two_processes_see_each_others_writes(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        mem, full, back = k.memory(4096), k.semaphore(), k.endpoint()
        with mem.map() as m:
            with spawned(k, "shm_peer.py", "write", "from the child", mem=mem, full=full):
                full.wait(timeout=10)
                assert m[:14] == b"from the child"
            m[:9] = b"from here"
            full.post()
            with spawned(k, "shm_peer.py", "read", "9", mem=mem, full=full, back=back) as peer:
                assert back.recv(timeout=10).data == b"from here"
                assert peer.wait(timeout=10) == 0


def test_a_read_only_capability_cannot_write_in_any_way(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        mem, back = k.memory(4096), k.endpoint()
        with spawned(k, "shm_peer.py", "tryro", mem=mem.copy(MAP_RO | Rights.COPY), back=back):
            outcomes = back.recv(timeout=10).data.decode()
        assert outcomes == "AccessDeniedError TypeError PermissionError"
        with mem.map() as m:
            assert m[:1] == b"\0"  # nothing got through


def test_a_read_only_descriptor_cannot_be_reopened_writable_by_another_uid(kernel_daemon):
    """The inode is 0400 and the kernel's: /proc/self/fd/N reopens nothing for others."""
    if os.getuid() != 0:
        pytest.skip("needs root to run the reopen attempt as another uid")
    with kernel.connect(autostart=False) as k:
        fd = k.memory(4096).copy(MAP_RO).open_fd()
        assert os.fstat(fd).st_mode & 0o777 == 0o400
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            os.setgid(65534)
            os.setuid(65534)
            try:
                os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
                os._exit(1)
            except PermissionError:
                os._exit(0)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        assert os.waitstatus_to_exitcode(status) == 0


def test_mapping_needs_the_map_and_read_rights_and_writing_needs_write(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        mem = k.memory(100)
        for rights in (Rights.READ | Rights.COPY, Rights.MAP | Rights.COPY):
            with pytest.raises(kernel.AccessDeniedError, match="lacks the (MAP|READ) right"):
                mem.copy(rights).map()
        with pytest.raises(kernel.AccessDeniedError, match="lacks the WRITE right"):
            mem.copy(MAP_RO).map(writable=True)
        with mem.map(writable=False) as m, pytest.raises(TypeError):
            m[0] = 1
        assert mem.copy(Rights.NONE).size() == 100  # any holder may ask the size


def test_sizes_are_checked_on_both_sides(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        for size in (0, -1, abi.MAX_MEMORY_SIZE + 1, 1.5):
            with pytest.raises(ValueError, match="size must be an integer"):
                k.memory(size)  # type: ignore[arg-type]
        for size in (0, abi.MAX_MEMORY_SIZE + 1):  # past the client's check: the kernel's
            with pytest.raises(kernel.InvalidArgumentError, match="size must be 1 to"):
                k._roundtrip(Op.MEMORY_CREATE, None, "create", arg=size)
        mem = k.memory(5000)
        with pytest.raises(kernel.InvalidArgumentError, match="unknown mode 7"):
            k._roundtrip(Op.MEMORY_MAP, mem, "map", arg=7)
        with pytest.raises(kernel.InvalidCapabilityError, match="not a memory object"):
            k._roundtrip(Op.MEMORY_MAP, k.notification(), "map")
        with mem.map() as m:
            assert len(m) == 5000 == mem.size()
            assert m[:] == bytes(5000)  # zero-filled


def test_a_process_has_a_quota_of_memory_bytes_freed_with_its_objects(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        # Sparse: a memfd of 1 GiB costs nothing until touched.
        objects = [k.memory(abi.MAX_MEMORY_SIZE) for _ in range(abi.MAX_MEMORY_BYTES // (1 << 30))]
        with pytest.raises(kernel.ResourceLimitError, match="process would have more than 4 GiB"):
            k.memory(1)
        objects.pop().close()
        extra = k.memory(1 << 20)
        with pytest.raises(kernel.ResourceLimitError):
            k.memory(abi.MAX_MEMORY_SIZE)
        extra.close()
        for mem in objects:
            mem.close()


def test_a_mapping_outlives_its_capabilities_but_revocation_stops_new_maps(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        mem = k.memory(4096)
        child = mem.copy()
        m = child.map()
        try:
            assert mem.revoke() == 1
            with pytest.raises(kernel.InvalidCapabilityError, match="revoked"):
                child.map()
            mem.close()  # the object is destroyed: its last capability went
            m[:4] = b"live"  # the pages stay until the last mapping goes (as munmap)
            assert m[:4] == b"live"
        finally:
            m.close()


def test_a_memory_capability_travels_in_a_message_with_fewer_rights(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        mem, ep = k.memory(4096), k.endpoint()
        with mem.map() as m:
            m[:5] = b"bulk!"
        received: list[kernel.Message] = []
        taker = threading.Thread(target=lambda: received.append(ep.recv(timeout=10)))
        taker.start()
        ep.send(b"here", caps=[mem.as_mint(MAP_RO, badge=3)], timeout=10)
        taker.join(10)
        got = received[0].caps[0]
        assert isinstance(got, kernel.MemoryCap)
        info = got.info()
        assert (info.kind, info.rights, info.badge) == ("memory object", MAP_RO, 3)
        with got.map() as ro:
            assert ro[:5] == b"bulk!"
            with pytest.raises(TypeError):
                ro[0] = 0


def _memory_fds_of(pid: int) -> int:
    """How many memory objects' descriptors process `pid` holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += "mkipc-memory" in os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass
    return count


def test_the_objects_of_a_process_that_dies_are_freed(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        back = k.endpoint()
        peer = k.spawn(
            [sys.executable, str(PEERS / "shm_peer.py"), "hold", "20"], caps={"back": back}
        )
        try:
            assert back.recv(timeout=10).data == b"ready"
            assert _memory_fds_of(kernel_daemon.pid) == 20
        finally:
            peer.kill()
            peer.wait(timeout=10)  # returns once the kernel has cleaned up
        assert _memory_fds_of(kernel_daemon.pid) == 0


def test_a_map_whose_waiter_gave_up_leaves_no_descriptor_behind(kernel_daemon):
    """The kernel answered as the client withdrew: the descriptor it sent is closed
    (the fixture checks this process's descriptors)."""
    with kernel.connect(autostart=False) as k:
        mem = k.memory(4096)
        conn = k._conn
        req = conn.submit(Op.MEMORY_MAP, mem.slot, -1, 0, b"", ())
        conn.cancel(req, mem.slot)
        assert mem.size() == 4096  # a round trip drains the orphaned completion
        mem.map().close()  # reads the socket's frames up to its own descriptor
        assert not conn._memory_fds


async def test_the_asyncio_face_maps_and_coordinates(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        mem, sem = await k.memory(8192), await k.semaphore()
        assert isinstance(mem, kernel.AsyncMemoryCap)
        assert await mem.size() == 8192
        with await mem.map() as m:
            m[-3:] = b"end"
        await sem.post()
        await sem.wait(timeout=5)
        ro = await mem.copy(MAP_RO)
        with await ro.map() as m:
            assert m[-3:] == b"end"
            with pytest.raises(TypeError):
                m[0] = 1
        fd = await ro.open_fd()
        try:
            with pytest.raises(PermissionError):
                mmap.mmap(fd, 8192, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)


def test_shm_example_runs_as_its_readme_says(kernel_daemon):
    out = run_script(readme_script(ROOT / "examples/shm/README.md"))
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == [
        "consumer: 10000 records in order, total 24997500.0",
        "producer: expected total 24997500.0",
        "the consumer cannot write: mmap can't modify a readonly memory map.",
    ]


def test_the_name_server_hands_out_memory_read_only_and_semaphores(kernel_daemon):
    with kernel.connect(autostart=False) as owner, kernel.connect(autostart=False) as client:
        mem, sem = owner.memory(4096), owner.semaphore(1)
        with mem.map() as m:
            m[:4] = b"shm!"
        owner.names.register("test.mem", mem, mode=0o666)
        owner.names.register("test.sem", sem, mode=0o666)
        got = client.names.lookup("test.mem", kind=kernel.MemoryCap)
        assert got.info().rights == MAP_RO | Rights.COPY | Rights.TRANSFER  # no WRITE
        with got.map() as ro:
            assert ro[:4] == b"shm!"
            with pytest.raises(TypeError):
                ro[0] = 0
        with pytest.raises(kernel.InvalidCapabilityError, match="holds a memory object"):
            client.names.lookup("test.mem")  # an endpoint is asked for by default
        theirs = client.names.lookup("test.sem", kind=kernel.SemaphoreCap)
        assert theirs.try_wait()
        assert not sem.try_wait()
        theirs.post()
        assert sem.try_wait()


def test_a_process_that_never_reads_its_descriptors_fails_its_maps_and_harms_nobody(
    kernel_daemon,
):
    """The kernel's bootstrap sockets are non-blocking: a full one fails that map with
    ResourceLimitError instead of stalling the kernel for everyone."""
    with kernel.connect(autostart=False) as hog, kernel.connect(autostart=False) as other:
        mem, conn = hog.memory(4096), hog._conn
        reqs = {conn.submit(Op.MEMORY_MAP, mem.slot, -1, 0, b"", ()) for _ in range(3000)}
        statuses: list[int] = []
        deadline = time.monotonic() + 20
        while len(statuses) < len(reqs) and time.monotonic() < deadline:
            c = conn.take()  # the completions only: the socket is never read
            if c is None:
                time.sleep(0.01)
            elif c.req_id in reqs:
                statuses.append(c.status)
        assert len(statuses) == 3000
        assert statuses[0] == kernel.Status.OK
        assert statuses.count(kernel.Status.NO_RESOURCES) > 0  # its socket filled up
        theirs = other.memory(4096)  # the kernel serves everyone else meanwhile
        with theirs.map() as m:
            m[:2] = b"ok"
    # the hog's unread descriptors went with its socket: the fixture checks for leaks
