"""The AS/NZS 4755 demand response modes an air conditioner understands, in order of restriction.

`drm0` is informal: nothing asserted, the appliance runs normally. A DRED that dies must leave it there.
"""

from __future__ import annotations

# name -> percent of rated input the air conditioner may use (the plot log's figure).
PERCENT = {"drm0": 100, "drm3": 75, "drm2": 50, "drm1": 0}

# Least restrictive first; the index is the restriction level.
ORDER = ("drm0", "drm3", "drm2", "drm1")

ALL = frozenset(ORDER)


def restriction(mode: str) -> int:
    """How restrictive a mode is: 0 for drm0 up to 3 for drm1 (compressor off)."""
    return ORDER.index(mode)


def more_restrictive(a: str, b: str) -> bool:
    return restriction(a) > restriction(b)
