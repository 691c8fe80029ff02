"""TokenWarehouse client: KV-cache blocks from a twfs mount, read from its shared-memory DRAM tier when
resident (no system call per block) and from block files otherwise. See docs/dram-tier.md."""

from .client import Client, TierFormatError, block_key, block_relpath, key_of
from . import layout

__version__ = "0.1.0"

__all__ = ["Client", "TierFormatError", "block_key", "block_relpath", "key_of", "layout", "__version__"]
