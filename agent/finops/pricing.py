"""What a GPU unit costs: the price table per GPU model, and MIG slices charged by their share.

A MIG instance with profile ``Ng.<mem>`` holds N of the GPU's compute slices: 7 on A100,
H100, H200 and B200, 4 on A30. It is charged N/slices of its GPU's price. Shared
(time-sliced) GPUs are divided among their containers before this (see ``queries``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from agent.finops.series import FinopsInputError

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
    """Share of the physical GPU one unit is: 1 for a whole GPU, 3/7 for ``3g.40gb`` on an
    H100; None for a MIG profile that names no slice count (``unknown``)."""
    if not profile:
        return 1.0
    match = _SLICES_RE.search(profile)
    if match is None:
        return None
    return min(int(match.group(1)) / mig_slices(model), 1.0)


class MissingPriceError(FinopsInputError):
    """A GPU model in the data has no entry in ``finops.prices``."""


@dataclass(frozen=True)
class PriceTable:
    usd_per_gpu_hour: Mapping[str, float]
    storage_usd_per_gb_month: float

    def price(self, model: str, *, gpu_hours: float | None = None) -> float:
        try:
            return float(self.usd_per_gpu_hour[model])
        except KeyError:
            held = f" ({gpu_hours:.1f} GPU-hours allocated this week)" if gpu_hours else ""
            known = ", ".join(repr(m) for m in sorted(self.usd_per_gpu_hour)) or "none"
            raise MissingPriceError(
                f"finops.prices: no price for GPU model {model!r}{held}; add it "
                f"(prices configured for: {known})") from None

    def check(self, models: Mapping[str, float]) -> None:
        """Fail on the first model (with the most GPU-hours) that has no price."""
        for model, hours in sorted(models.items(), key=lambda item: -item[1]):
            self.price(model, gpu_hours=hours)
