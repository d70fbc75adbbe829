"""The report's shared GPUs: per GPU shared by time-slicing, MPS, fractions or MIG, each tenant's
share, use and charge, and what nobody held, in cents that add up to the GPU's cost.

A tenant is charged its share of each GPU-hour (``gpu_hours_allocated`` x the model's
price); the GPU's unallocated row is the rest of its hours. Rounded to the cent, the rows of
one GPU add up exactly to the GPU's hours x price rounded to the cent: the cents each row
loses to rounding go to the rows that lost the most (largest remainder), so no cent is made
up or lost between the tenants' bills and the GPU's cost.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from agent.finops.series import SHARED_MODES

UNALLOCATED_TENANT = "(unallocated)"
COLUMNS = ("hostname", "uuid", "model", "price_per_gpu_hour", "gpu_hours_capacity", "gpu_cost",
           "tenant", "namespace", "pod", "team", "mode", "share", "gpu_hours_allocated",
           "gpu_hours_used", "utilization", "gpu_hours_idle", "gpu_hours_unmeasured", "cost",
           "idle_cost")


def cents_that_add_up(amounts: np.ndarray) -> np.ndarray:
    """``amounts`` (dollars) rounded to cents so that they add up to their exact sum rounded
    to the cent (largest remainder)."""
    if len(amounts) == 0:
        return np.zeros(0)
    exact = amounts * 100
    floors = np.floor(exact + 1e-9)
    target = round(float(exact.sum()))
    left = target - int(floors.sum())
    order = np.argsort(-(exact - floors), kind="stable")
    floors[order[:max(0, left)]] += 1
    if left < 0:  # float noise put a floor above the exact sum: take the cents back
        floors[order[::-1][:-left]] -= 1
    return floors / 100


def shared_gpu_table(gpus: pd.DataFrame, *, teams: Mapping[str, str],
                     unassigned: str = "unassigned") -> pd.DataFrame:
    """Priced per-GPU tenant sums (``price_usage(..., gpus=...)``) -> one row per tenant and
    per unallocated remainder of each shared GPU, sorted by the GPU's cost."""
    if gpus is None or gpus.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    rows = gpus.copy()
    for key in ("hostname", "uuid", "model", "namespace", "pod", "mode"):
        rows[key] = rows[key].astype(str)
    shared_keys = set(map(tuple, rows.loc[rows["mode"].isin(SHARED_MODES),
                                          ["hostname", "uuid"]].to_numpy()))
    mask = [(h, u) in shared_keys for h, u in zip(rows["hostname"], rows["uuid"], strict=True)]
    rows = rows[mask]
    if rows.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    free = (rows["namespace"] == "") & (rows["pod"] == "")
    rows["tenant"] = np.where(free, UNALLOCATED_TENANT, rows["namespace"] + "/" + rows["pod"])
    rows["team"] = [("" if f else teams.get(ns, unassigned))
                    for f, ns in zip(free, rows["namespace"], strict=True)]
    rows["price_per_gpu_hour"] = rows["price"]
    per_gpu = rows.groupby(["hostname", "uuid"])
    rows["gpu_hours_capacity"] = per_gpu["gpu_hours_allocated"].transform("sum")
    rows["share"] = rows["gpu_hours_allocated"] / rows["gpu_hours_capacity"].where(
        rows["gpu_hours_capacity"] > 0)
    allocated = rows["gpu_hours_allocated"].where(rows["gpu_hours_allocated"] > 0)
    rows["utilization"] = (rows["gpu_hours_used"] / allocated).where(~free)
    for column in ("gpu_hours_used", "gpu_hours_idle", "gpu_hours_unmeasured", "idle_cost"):
        rows[column] = rows[column].where(~free, np.nan)  # nobody held it: no use to show
    rows["_free"] = free
    rows = rows.sort_values(["hostname", "uuid", "_free", "cost", "tenant"],
                            ascending=[True, True, True, False, True])
    cents = rows.groupby(["hostname", "uuid"], sort=False)["cost"].transform(
        lambda costs: pd.Series(cents_that_add_up(costs.to_numpy(dtype=float)),
                                index=costs.index))
    rows["cost"] = cents
    rows["gpu_cost"] = rows.groupby(["hostname", "uuid"])["cost"].transform("sum").round(2)
    order = rows.groupby(["hostname", "uuid"])["gpu_cost"].transform("max")
    rows = rows.assign(_order=-order).sort_values(
        ["_order", "hostname", "uuid", "_free", "cost", "tenant"],
        ascending=[True, True, True, True, False, True])
    return rows[list(COLUMNS)].reset_index(drop=True)
