"""Which hygiene jobs exist, their config sections, and how each is built.

A job module exposes ``build(context: JobContext) -> HygieneJob`` (``context``); the engine,
the scheduler and the CLI find it here by the job's name. Each builder imports its job when
it is called (a command that runs one job does not load the others' SDKs); no job imports
this module back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from agent.config import HygieneJobConfig, StewardConfig
from agent.controller.hygiene.context import JobContext
from agent.controller.hygiene.model import HygieneJob


class UnknownJob(Exception):
    """Not a hygiene job name (exit code 2)."""


def _idle_gpus(context: JobContext) -> HygieneJob:
    from agent.controller.hygiene.idle_gpus.job import build

    return build(context)


def _stale_images(context: JobContext) -> HygieneJob:
    from agent.controller.hygiene.images.job import build

    return build(context)


def _orphaned_buckets(context: JobContext) -> HygieneJob:
    from agent.controller.hygiene.buckets.job import build

    return build(context)


# job name -> (section under hygiene., builder)
JOBS: Final[dict[str, tuple[str, Callable[[JobContext], HygieneJob]]]] = {
    "idle-gpus": ("idle_gpus", _idle_gpus),
    "stale-images": ("stale_images", _stale_images),
    "orphaned-buckets": ("orphaned_buckets", _orphaned_buckets),
}


def check_name(name: str) -> None:
    if name not in JOBS:
        raise UnknownJob(f"unknown hygiene job {name!r}; known: {', '.join(JOBS)}")


def settings_of(config: StewardConfig, name: str) -> HygieneJobConfig:
    check_name(name)
    section: HygieneJobConfig = getattr(config.hygiene, JOBS[name][0])
    return section


def config_key(name: str) -> str:
    check_name(name)
    return f"hygiene.{JOBS[name][0]}"


def build_job(name: str, context: JobContext) -> HygieneJob:
    check_name(name)
    return JOBS[name][1](context)
