"""The offline source: the hourly series as a Parquet file, and exporting one from Prometheus.

The file holds :data:`~agent.finops.series.SERIES_COLUMNS` (``ts`` as a UTC timestamp,
labels dictionary-encoded, values as doubles; null where utilization is unmeasured) and, in
its schema metadata, the step, the exported range and the gaps Prometheus had in it. A
step of the report outside the exported range is a ``no_data`` gap.

Exports written before shares were fractions of the physical GPU have no ``mode`` column:
their MIG rows held one instance (a unit), converted on read to the instance's part of the
GPU; they have no unallocated rows, so their GPUs' unallocated hours are not known.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent import __version__
from agent.finops.series import (
    LABEL_COLUMNS,
    SERIES_COLUMNS,
    UNALLOCATED_MODE,
    FinopsInputError,
    Gap,
    SeriesSource,
    iso,
    merge_step_gaps,
)
from agent.mig import gpu_fraction

META_STEP = b"steward.finops.step_seconds"
META_START = b"steward.finops.start"
META_END = b"steward.finops.end"
META_GAPS = b"steward.finops.gaps"
META_SOURCE = b"steward.finops.source"
SCHEMA = pa.schema(
    [pa.field("ts", pa.timestamp("s", tz="UTC"), nullable=False)]
    + [pa.field(name, pa.string(), nullable=False) for name in LABEL_COLUMNS]
    + [pa.field("share", pa.float64(), nullable=False)]
    + [pa.field(name, pa.float64()) for name in ("util_mean", "util_max")]
)
_ROW_GROUP = 1 << 20


def _to_table(frame: pd.DataFrame) -> pa.Table:
    columns = {"ts": pa.array(frame["ts"].to_numpy(dtype="int64"), pa.int64())
               .cast(pa.timestamp("s", tz="UTC"))}
    for name in LABEL_COLUMNS:
        columns[name] = pa.array(frame[name].astype(str).to_numpy(dtype=object), pa.string())
    for name in ("share", "util_mean", "util_max"):
        # Unmeasured is null, not NaN: SQL engines read it as missing (DuckDB even folds
        # isnan() to false from column statistics that leave NaN out).
        columns[name] = pa.array(frame[name].to_numpy(dtype="float64"), pa.float64(),
                                 from_pandas=True)
    return pa.Table.from_pydict(columns, schema=SCHEMA)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    gaps: list[Gap]


def write_series(path: Path, batches: Iterator[pd.DataFrame], *, step_seconds: int,
                 start: datetime, end: datetime, gaps: list[Gap], source: str) -> ExportResult:
    """Write frames of the hourly series to ``path`` (atomically: a temp file, then rename)."""
    metadata = {
        META_STEP: str(step_seconds).encode(), META_START: iso(start).encode(),
        META_END: iso(end).encode(), META_SOURCE: source.encode(),
        META_GAPS: json.dumps([gap.to_json() for gap in gaps]).encode(),
        b"steward.version": __version__.encode(),
    }
    schema = SCHEMA.with_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    rows = 0
    try:
        with pq.ParquetWriter(partial, schema, compression="zstd",
                              use_dictionary=list(LABEL_COLUMNS)) as writer:
            for frame in batches:
                if len(frame):
                    writer.write_table(_to_table(frame), row_group_size=_ROW_GROUP)
                    rows += len(frame)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return ExportResult(path=path, rows=rows, gaps=gaps)


def export_parquet(source: SeriesSource, path: Path, start: datetime,
                   end: datetime) -> ExportResult:
    """Copy ``[start, end)`` of ``source`` (Prometheus) into a Parquet file for offline runs.

    Export two weeks to get the week-over-week change offline.
    """
    gaps = source.gaps(start, end)
    return write_series(path, source.batches(start, end), step_seconds=source.step_seconds,
                        start=start, end=end, gaps=gaps, source=source.describe())


class ParquetSource:
    """The hourly series from a file written by :func:`export_parquet` (or the benchmark)."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        self.path = path
        self._threads = threads or min(8, os.cpu_count() or 1)
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise FinopsInputError(f"--parquet {path}: cannot read it as Parquet: {exc}") \
                from None
        metadata = schema.metadata or {}
        missing = [c for c in SERIES_COLUMNS if c not in schema.names]
        # Before shares were fractions of the GPU (see the module doc).
        self._legacy = missing == ["mode"]
        if self._legacy:
            missing = []
        if missing or META_STEP not in metadata:
            what = f"columns {', '.join(missing)}" if missing else "its step in the metadata"
            raise FinopsInputError(
                f"--parquet {path}: not a Steward FinOps export (missing {what})")
        self._step = int(metadata[META_STEP])
        self._start = _meta_time(metadata.get(META_START))
        self._end = _meta_time(metadata.get(META_END))
        self._gaps = [Gap.from_json(g) for g in json.loads(metadata.get(META_GAPS, b"[]"))]
        self._origin = metadata.get(META_SOURCE, b"").decode()

    @property
    def step_seconds(self) -> int:
        return self._step

    def describe(self) -> str:
        origin = f", exported from {self._origin}" if self._origin else ""
        return f"Parquet {self.path}{origin}"

    def batches(self, start: datetime, end: datetime, *,
                columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """Row groups overlapping ``[start, end)``, read ahead on a few threads, in order."""
        wanted = list(columns or SERIES_COLUMNS)
        if "ts" not in wanted:
            wanted.insert(0, "ts")
        if self._legacy:
            wanted = [c for c in wanted if c != "mode"]
            wanted += [c for c in ("share", "model", "profile") if c not in wanted]
        dictionaries = [c for c in LABEL_COLUMNS if c in wanted]
        lo, hi = int(start.timestamp()), int(end.timestamp())
        metadata = pq.read_metadata(self.path)
        groups = [i for i in range(metadata.num_row_groups)
                  if _may_overlap(metadata.row_group(i), lo, hi)]
        # A ParquetFile is not safe to read from several threads: one per thread.
        local = threading.local()

        def read(index: int) -> pd.DataFrame:
            parquet = getattr(local, "file", None)
            if parquet is None:
                parquet = local.file = pq.ParquetFile(self.path, read_dictionary=dictionaries)
            table = parquet.read_row_group(index, columns=wanted, use_threads=False)
            ts = table.column("ts").cast(pa.timestamp("s", tz="UTC"), safe=False) \
                .cast(pa.int64())
            table = table.set_column(table.schema.get_field_index("ts"), "ts", ts)
            if pc.min(ts).as_py() < lo or pc.max(ts).as_py() >= hi:
                table = table.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))
            # split_blocks: no copy into one 2-D block per dtype.
            frame: pd.DataFrame = table.to_pandas(split_blocks=True)
            return _from_legacy(frame) if self._legacy else frame

        with ThreadPoolExecutor(self._threads, thread_name_prefix="finops-parquet") as pool:
            ahead: deque[Future[pd.DataFrame]] = deque()
            for index in groups:
                ahead.append(pool.submit(read, index))
                if len(ahead) > self._threads:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()

    def gaps(self, start: datetime, end: datetime) -> list[Gap]:
        """The exported gaps inside the range, plus the range's steps outside the export."""
        inside = [g for g in self._gaps if g.end > start and g.start < end]
        lo, hi = int(start.timestamp()), int(end.timestamp())
        covered_lo = int(self._start.timestamp()) if self._start else lo
        covered_hi = int(self._end.timestamp()) if self._end else hi
        outside = [ts for ts in range(lo, hi, self._step) if ts < covered_lo or ts >= covered_hi]
        return merge_step_gaps(outside, kind="no_data", scope="fleet",
                               step_seconds=self._step) + inside


def _from_legacy(frame: pd.DataFrame) -> pd.DataFrame:
    """Unit shares -> shares of the physical GPU; an unknown MIG profile counts whole."""
    units = frame[["model", "profile"]].astype(str).drop_duplicates()
    fractions = {(m, p): gpu_fraction(m, p) or 1.0 for m, p in units.itertuples(index=False)}
    factor = [fractions[(str(m), str(p))]
              for m, p in zip(frame["model"], frame["profile"], strict=True)]
    frame["share"] = frame["share"].to_numpy(dtype="float64") * factor
    frame["mode"] = pd.Categorical(
        ["mig" if p else "exclusive" for p in frame["profile"].astype(str)],
        categories=["exclusive", "mig", UNALLOCATED_MODE])
    return frame


def _may_overlap(group: pq.RowGroupMetaData, lo: int, hi: int) -> bool:
    """From the ``ts`` statistics of a row group; True when they are missing."""
    for index in range(group.num_columns):
        column = group.column(index)
        if column.path_in_schema != "ts":
            continue
        stats = column.statistics
        if stats is None or not stats.has_min_max:
            return True
        # Parquet keeps no second unit: the file holds milliseconds (or finer).
        first, last = stats.min, stats.max
        return bool(_epoch(first) < hi and _epoch(last) >= lo)
    return True


def _epoch(value: object) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) / 1000  # type: ignore[arg-type]


def _meta_time(raw: bytes | None) -> datetime | None:
    return datetime.fromisoformat(raw.decode()).astimezone(UTC) if raw else None
