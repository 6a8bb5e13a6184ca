"""The per-process capability table (compiled: see _table.pyx)."""

from ._table import DEFAULT_LIMIT as DEFAULT_LIMIT
from ._table import GEN_MASK as GEN_MASK
from ._table import INDEX_BITS as INDEX_BITS
from ._table import INDEX_MASK as INDEX_MASK
from ._table import Capability as Capability
from ._table import CapTable as CapTable
from ._table import SlotError as SlotError
from ._table import derive as derive
from ._table import descendants as descendants
from ._table import unlink as unlink
