"""Slack's v0 request signature: what is accepted and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.notify.signing import SigningSecret, Unverified, sign, signing_secret_from
from tests.notify.clicks import SECRET

NOW = 1_800_000_000.0
BODY = b"payload=%7B%7D"


def headers(ts: float, signature: str | None = None) -> dict[str, str]:
    stamp = str(int(ts))
    return {"X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature or sign(SECRET, stamp, BODY)}


def test_slack_documented_example_signature() -> None:
    # The example in Slack's "Verifying requests from Slack" guide.
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
            b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
            b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
            b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
            b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    assert sign(SECRET, "1531420618", body) == (
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503")


def test_a_good_signature_is_accepted() -> None:
    verified = SigningSecret(secret=SECRET).verify(headers(NOW - 10), BODY, now=NOW)
    assert verified.signature == sign(SECRET, str(int(NOW - 10)), BODY)


@pytest.mark.parametrize("case", ["bad", "other-secret", "body-changed", "stale", "future",
                                  "unsigned", "no-timestamp", "junk-timestamp"])
def test_refused(case: str) -> None:
    secret = SigningSecret(secret=SECRET)
    body = BODY
    given = headers(NOW)
    if case == "bad":
        given["X-Slack-Signature"] = "v0=" + "0" * 64
    elif case == "other-secret":
        given["X-Slack-Signature"] = sign("another-secret", str(int(NOW)), BODY)
    elif case == "body-changed":
        body = BODY + b"x"
    elif case == "stale":
        given = headers(NOW - 301)
    elif case == "future":
        given = headers(NOW + 301)
    elif case == "unsigned":
        del given["X-Slack-Signature"]
    elif case == "no-timestamp":
        del given["X-Slack-Request-Timestamp"]
    else:
        given["X-Slack-Request-Timestamp"] = "soon"
    with pytest.raises(Unverified) as refused:
        secret.verify(given, body, now=NOW)
    assert SECRET not in str(refused.value)


def test_headers_are_case_insensitive() -> None:
    given = {k.lower(): v for k, v in headers(NOW).items()}
    SigningSecret(secret=SECRET).verify(given, BODY, now=NOW)


def test_secret_from_file_then_env(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    from_file = signing_secret_from(path, {"SLACK_SIGNING_SECRET": "env-secret"})
    assert from_file is not None
    from_file.verify(headers(NOW), BODY, now=NOW)
    from_env = signing_secret_from(None, {"SLACK_SIGNING_SECRET": SECRET})
    assert from_env is not None
    from_env.verify(headers(NOW), BODY, now=NOW)
    assert signing_secret_from(None, {}) is None
    path.write_text("")
    with pytest.raises(ValueError):
        signing_secret_from(path, {})
