"""The DRAM tier's binary layout, version 1 (docs/dram-tier.md, include/tokenwarehouse.h).

All integers are little-endian. The struct formats use standard sizes ("<"); on a little-endian machine
CPython unpacks each of these fields with one native load of its size (an aligned 8-byte load is single-copy
atomic on x86-64 and AArch64), so a `seq` value is never torn.
"""

from __future__ import annotations

import struct

MAGIC = b"TWDRAM01"
VERSION = 1
SUPERBLOCK_SIZE = 4096
ENTRY_SIZE = 64
ALIGNMENT = 4096

STATE_EMPTY = 0    # never used: a lookup stops here
STATE_VALID = 1
STATE_DELETED = 2  # removed: a lookup keeps probing

# Superblock, offset 0:
#   magic[8] version:u32 superblock_size:u32 generation:u64 file_size:u64 table_offset:u64
#   table_capacity:u64 entry_size:u32 max_probe:u32 data_offset:u64 data_size:u64      (72 bytes)
SUPERBLOCK = struct.Struct("<8sIIQQQQIIQQ")
GENERATION_OFFSET = 16

# Table entry (64 bytes):
#   seq:u64 state:u32 reserved:u32 key_lo:u64 key_hi:u64 data_offset:u64 length:u64 checksum:u64 reserved:u64
ENTRY = struct.Struct("<QIIQQQQQQ")
# What a lookup reads after `seq`: state, key_lo, key_hi, data_offset, length, checksum (from offset 8).
ENTRY_BODY = struct.Struct("<I4xQQQQQ")

# Hit counters: a second memory file, handed over with the tier by the broker: `table_capacity`
# little-endian u32, one per table entry.
HIT = struct.Struct("<I")

assert SUPERBLOCK.size == 72
assert ENTRY.size == ENTRY_SIZE
assert ENTRY_BODY.size == 48

__all__ = [
    "MAGIC", "VERSION", "SUPERBLOCK_SIZE", "ENTRY_SIZE", "ALIGNMENT", "STATE_EMPTY", "STATE_VALID",
    "STATE_DELETED", "SUPERBLOCK", "GENERATION_OFFSET", "ENTRY", "ENTRY_BODY", "HIT",
]
