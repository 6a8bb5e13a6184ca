"""Kernel objects. Their per-message logic is compiled: see kernel/_core/kcore.pyx."""

from ..._core.kcore import Endpoint as Endpoint
from ..._core.kcore import KernelObject as KernelObject
from ..._core.kcore import Notification as Notification
from ..._core.kcore import OpError as OpError
from ..._core.kcore import Reply as Reply
