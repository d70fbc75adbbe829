"""Which hygiene jobs exist, their config sections, and how each is built.

A job module exposes ``build(context: JobContext) -> HygieneJob``; the engine, the scheduler
and the CLI find it here by the job's name.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from agent.config import HygieneJobConfig, StewardConfig
from agent.controller.hygiene.model import HygieneJob
from agent.controller.hygiene.progress import NoProgress, Progress
from agent.controller.hygiene.references import (
    BucketReferences,
    ImageReferences,
    ReferencesUnavailable,
)

# job name -> (module under agent.controller.hygiene, section under hygiene.)
JOBS: Final[dict[str, tuple[str, str]]] = {
    "idle-gpus": ("idle_gpus.job", "idle_gpus"),
    "stale-images": ("images.job", "stale_images"),
    "orphaned-buckets": ("buckets.job", "orphaned_buckets"),
}


class UnknownJob(Exception):
    """Not a hygiene job name (exit code 2)."""


class JobUnavailable(Exception):
    """The job cannot be built here: its module is missing or its settings are unusable."""


@dataclass(frozen=True)
class JobContext:
    """What a job's ``build`` gets: the config and the shared clients, all injected."""

    config: StewardConfig
    api_client: Any | None = None  # kubernetes.client.ApiClient, when a cluster is configured
    clock: Callable[[], float] = time.time
    progress: Progress = field(default_factory=NoProgress)
    # Built for a restore: it needs only what it restores to (a registry, S3, the cluster
    # for Kubernetes objects), never the evidence sources of a scan.
    for_restore: bool = False


class NoReferences:
    """The references of a job built for a restore: a restore decides nothing about use,
    so it needs no cluster; any read fails as an unreadable cluster would."""

    def image_references(self) -> ImageReferences:
        raise ReferencesUnavailable("a restore reads no cluster references")

    def bucket_references(self) -> BucketReferences:
        raise ReferencesUnavailable("a restore reads no cluster references")


def check_name(name: str) -> None:
    if name not in JOBS:
        raise UnknownJob(f"unknown hygiene job {name!r}; known: {', '.join(JOBS)}")


def settings_of(config: StewardConfig, name: str) -> HygieneJobConfig:
    check_name(name)
    section: HygieneJobConfig = getattr(config.hygiene, JOBS[name][1])
    return section


def config_key(name: str) -> str:
    check_name(name)
    return f"hygiene.{JOBS[name][1]}"


def build_job(name: str, context: JobContext) -> HygieneJob:
    check_name(name)
    module_name = f"agent.controller.hygiene.{JOBS[name][0]}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not exc.name or not module_name.startswith(exc.name):
            raise  # the job is there, one of its own imports is not
        raise JobUnavailable(f"hygiene job {name} is not part of this build") from exc
    builder: Callable[[JobContext], HygieneJob] = module.build
    return builder(context)
