"""mkipc: a microkernel-style capability IPC runtime for Python.

    import kernel
    with kernel.connect() as k:          # starts a private kernel if none runs
        ep = k.endpoint()
        ...

See README.md for the API of both faces (blocking and asyncio).
"""

from __future__ import annotations

from capabilities import Rights as Rights

from .abi import MAX_PAYLOAD as MAX_PAYLOAD
from .client._common import CapInfo as CapInfo
from .client._common import CopyOf as CopyOf
from .client._common import Credentials as Credentials
from .client._common import MintOf as MintOf
from .client._conn import Connection as _Connection
from .client._names import NameEntry as NameEntry
from .client.aio import AsyncEndpointCap as AsyncEndpointCap
from .client.aio import AsyncKernel as AsyncKernel
from .client.aio import AsyncMemoryCap as AsyncMemoryCap
from .client.aio import AsyncMessage as AsyncMessage
from .client.aio import AsyncNotificationCap as AsyncNotificationCap
from .client.aio import AsyncPipeReaderCap as AsyncPipeReaderCap
from .client.aio import AsyncPipeWriterCap as AsyncPipeWriterCap
from .client.aio import AsyncProcess as AsyncProcess
from .client.aio import AsyncQueueCap as AsyncQueueCap
from .client.aio import AsyncReplyCap as AsyncReplyCap
from .client.aio import AsyncSemaphoreCap as AsyncSemaphoreCap
from .client.aio_session import AsyncSession as AsyncSession
from .client.aio_session import AsyncSessionServer as AsyncSessionServer
from .client.session import Session as Session
from .client.session import SessionMessage as SessionMessage
from .client.session import SessionReply as SessionReply
from .client.session import SessionServer as SessionServer
from .client.session_group import SessionGroup as SessionGroup
from .client.signals import AsyncSignals as AsyncSignals
from .client.signals import Sig as Sig
from .client.signals import Signals as Signals
from .client.sync import EndpointCap as EndpointCap
from .client.sync import Kernel as Kernel
from .client.sync import MemoryCap as MemoryCap
from .client.sync import Message as Message
from .client.sync import NotificationCap as NotificationCap
from .client.sync import PipeReaderCap as PipeReaderCap
from .client.sync import PipeWriterCap as PipeWriterCap
from .client.sync import Process as Process
from .client.sync import QueueCap as QueueCap
from .client.sync import QueueMessage as QueueMessage
from .client.sync import ReplyCap as ReplyCap
from .client.sync import SemaphoreCap as SemaphoreCap
from .errors import AccessDeniedError as AccessDeniedError
from .errors import AlreadyExistsError as AlreadyExistsError
from .errors import CallTimeoutError as CallTimeoutError
from .errors import CancelledCallError as CancelledCallError
from .errors import InvalidArgumentError as InvalidArgumentError
from .errors import InvalidCapabilityError as InvalidCapabilityError
from .errors import IPCError as IPCError
from .errors import MessageTooLargeError as MessageTooLargeError
from .errors import NotFoundError as NotFoundError
from .errors import PeerClosedError as PeerClosedError
from .errors import PipeClosedError as PipeClosedError
from .errors import ResourceLimitError as ResourceLimitError
from .errors import Status as Status
from .errors import WouldBlock as WouldBlock
from .service import AsyncServiceClient as AsyncServiceClient
from .service import RemoteError as RemoteError
from .service import RequestContext as RequestContext
from .service import Service as Service
from .service import ServiceClient as ServiceClient


def connect(socket: str | None = None, *, autostart: bool = True) -> Kernel:
    """Connect to the kernel (blocking face).

    Args:
        socket: the kernel's socket path; default `$MKIPC_SOCKET`, else a private
            per-user path in `$XDG_RUNTIME_DIR` or the temp directory.
        autostart: start a per-user kernel when none listens there (it exits by
            itself after it has been idle for `$MKIPC_IDLE_EXIT` seconds, default 30).

    Raises:
        PeerClosedError: no kernel listens and autostart is off or failed.
    """
    return Kernel(_Connection(socket, autostart=autostart))


def connect_async(socket: str | None = None, *, autostart: bool = True) -> AsyncKernel:
    """Connect to the kernel (asyncio face); use as `async with kernel.connect_async() as k:`."""
    return AsyncKernel(socket, autostart=autostart)
