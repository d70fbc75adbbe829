"""What a GPU costs: the price table per GPU model.

Shares arrive as fractions of the physical GPU (``steward_gpu_pod_allocated_ratio``: a
``3g.40gb`` MIG instance is 3/7 of an H100, a KAI ``gpu-fraction: 0.25`` pod a quarter);
:func:`gpu_fraction` converts the unit shares of Parquet exports written before that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.finops.series import FinopsInputError
from agent.mig import gpu_fraction, mig_slices

__all__ = ["MissingPriceError", "PriceTable", "gpu_fraction", "mig_slices"]


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
