"""What a hygiene job's ``build`` gets (the config and the shared clients, all injected), and
the error a build raises when the job cannot run here. Job modules import this, never the
catalog (``jobs``) that imports them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config import StewardConfig
from agent.controller.hygiene.progress import NoProgress, Progress
from agent.controller.hygiene.references import (
    BucketReferences,
    ImageReferences,
    ReferencesUnavailable,
)


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
