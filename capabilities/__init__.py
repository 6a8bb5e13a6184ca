"""The capability model: rights, per-process capability tables."""

from .rights import DEFAULT_ENDPOINT_RIGHTS as DEFAULT_ENDPOINT_RIGHTS
from .rights import DEFAULT_MEMORY_RIGHTS as DEFAULT_MEMORY_RIGHTS
from .rights import DEFAULT_NOTIFICATION_RIGHTS as DEFAULT_NOTIFICATION_RIGHTS
from .rights import DEFAULT_PIPE_READER_RIGHTS as DEFAULT_PIPE_READER_RIGHTS
from .rights import DEFAULT_PIPE_WRITER_RIGHTS as DEFAULT_PIPE_WRITER_RIGHTS
from .rights import DEFAULT_QUEUE_RIGHTS as DEFAULT_QUEUE_RIGHTS
from .rights import DEFAULT_REPLY_RIGHTS as DEFAULT_REPLY_RIGHTS
from .rights import DEFAULT_SEMAPHORE_RIGHTS as DEFAULT_SEMAPHORE_RIGHTS
from .rights import Rights as Rights
from .table import Capability as Capability
from .table import CapTable as CapTable
from .table import SlotError as SlotError
