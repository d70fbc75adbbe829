"""How much of a physical GPU a MIG instance is: its compute slices over the GPU's.

A MIG profile ``Ng.<memory>`` holds N of the GPU's compute slices: 7 on A100, H100, H200,
B200 and GB200, 4 on A30. Compute slices, not memory slices, are the denominator: an H100
has 8 memory slices but 7 compute slices, so seven ``1g.10gb`` instances fill it (7/7), and
an instance is worth what it can compute. Shared by the node agent (the share it exports)
and the FinOps report (Parquet exports written before shares were whole-GPU fractions).
"""

from __future__ import annotations

import re

_SLICES_RE = re.compile(r"(?:^|\.)(\d+)g\.")
# GPU models whose MIG layout is not 7 compute slices.
_SLICES_BY_MODEL = (("A30", 4),)
DEFAULT_SLICES = 7


def mig_slices(model: str) -> int:
    for marker, slices in _SLICES_BY_MODEL:
        if marker in model:
            return slices
    return DEFAULT_SLICES


def gpu_fraction(model: str, profile: str) -> float | None:
    """Share of the physical GPU one unit is: 1 for a whole GPU (no profile), 3/7 for
    ``3g.40gb`` on an H100; None for a MIG profile that names no slice count."""
    if not profile:
        return 1.0
    match = _SLICES_RE.search(profile)
    if match is None:
        return None
    return min(int(match.group(1)) / mig_slices(model), 1.0)
