"""Owners are told in Slack through the notifier's Slack sink, routed by ``slack.routes``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.config import StewardConfig
from agent.controller.hygiene.notify import (
    LogNotifier,
    NotifyFailed,
    OwnerNotice,
    SlackNotifier,
    notifier_from_config,
)
from agent.sim.slack_stub import SlackStub

NOTICE = OwnerNotice(kind="marked", job="idle-gpus", resource="data-science/Deployment/dev",
                     action="scale_to_zero", reason="1 GPU idle for 2h", deadline=1.8e9,
                     owner="vision", evidence={"peak_utilization": 0.0},
                     labels={"hygiene_job": "idle-gpus", "namespace": "data-science"})


@pytest.fixture
def slack() -> Iterator[SlackStub]:
    with SlackStub() as stub:
        yield stub


def _config(stub: SlackStub, **slack: object) -> StewardConfig:
    return StewardConfig.model_validate({"slack": {
        "api_url": stub.api_url, "token": "xoxb-test", **slack}})


@pytest.mark.integration
def test_owner_notice_goes_to_the_routed_channel(slack: SlackStub) -> None:
    notifier = notifier_from_config(_config(
        slack, default_channel="#ops",
        routes=[{"match": {"namespace": "data-science"}, "channel": "#ds-team"}]))
    assert isinstance(notifier, SlackNotifier)
    notifier.notify(NOTICE)
    [message] = slack.messages("#ds-team")
    assert "marked data-science/Deployment/dev: scale_to_zero after 2027-01-15T08:00:00Z" \
        in message.text
    assert "steward.io/exempt=true" in str(message.blocks)
    assert slack.messages("#ops") == []


@pytest.mark.integration
def test_slack_failure_is_notify_failed(slack: SlackStub) -> None:
    notifier = notifier_from_config(_config(slack, default_channel="#ops"))
    slack.fail("status", status=500, seconds=5)
    with pytest.raises(NotifyFailed, match="slack"):
        notifier.notify(NOTICE)


def test_without_token_or_channel_owners_are_told_in_the_log() -> None:
    assert isinstance(notifier_from_config(StewardConfig()), LogNotifier)
    LogNotifier().notify(NOTICE)


@pytest.mark.integration
def test_an_owner_notice_cannot_ping_or_link_from_outside_text(slack: SlackStub) -> None:
    # A reference found in an annotation, an image tag or a bucket's tag ends up in the
    # reason and evidence: it must arrive as text, never as a mention or a link.
    hostile = OwnerNotice(
        kind="marked", job="stale-images", resource="registry/app:<!channel>",
        action="delete", reason="unused; see <https://evil.example|docs> @here",
        deadline=1.8e9, evidence={"note": "<@U024BE7LH> & <!everyone>"},
        labels={"hygiene_job": "stale-images"})
    notifier = notifier_from_config(_config(slack, default_channel="#ops"))
    notifier.notify(hostile)
    [message] = slack.messages("#ops")
    [section] = message.blocks[:1]
    sent = [message.text, section["text"]["text"]]
    assert section["text"]["verbatim"] is True
    for text in sent:
        assert "<!channel>" not in text and "<!everyone>" not in text
        assert "<@U024BE7LH>" not in text and "<https://" not in text
        assert "@here" not in text.replace("@\u200bhere", "")
    assert "&lt;!channel&gt;" in message.text
    assert "&lt;@U024BE7LH&gt; &amp; &lt;!everyone&gt;" in section["text"]["text"]
