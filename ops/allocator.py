"""The C allocator tuned for a long copy: few arenas, large buffers returned to the system when freed.

glibc gives each thread that allocates its own arena (up to 8 per core) and,
after the first large buffer is freed, raises the size above which buffers
get their own mapping, so message bodies end up in arenas that never shrink:
peak RSS then grows with the mailbox instead of with the batch. Fixed
thresholds keep every buffer above `MAP_OWN` in its own mapping, unmapped on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt(3) parameters.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
ARENAS = 2
MAP_OWN = 128 * 1024


def bound_allocator() -> bool:
    """Apply the settings when the C library is glibc; whether it was."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, ARENAS) and mallopt(_M_MMAP_THRESHOLD, MAP_OWN)
                and mallopt(_M_TRIM_THRESHOLD, MAP_OWN))
