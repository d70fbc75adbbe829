"""The steward CLI as a user runs it: exit codes, one-line errors, logs, no secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.net import metric_value, wait_until
from tests.support.steward import start_node


def steward(*args: str, env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          check=False, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args", [("--help",), ("node", "--help")])
def test_help_exits_zero(args: tuple[str, ...]) -> None:
    result = steward(*args)
    assert result.returncode == 0
    assert "usage: steward" in result.stdout


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("node", "--gpu-backend", "cuda")])
def test_bad_usage_exits_two(args: tuple[str, ...]) -> None:
    result = steward(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_bad_config_is_one_line_and_exit_two(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("node:\n  collect_interval_seconds: 0\n", encoding="utf-8")
    result = steward("node", "--config", str(config), "--gpu-backend", "sim")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("steward: config error: node.collect_interval_seconds:")


@pytest.mark.parametrize(("kubeconfig", "message"), [
    (None, "cannot read kubeconfig"),
    ("users: [{name: u, user: {exec: {command: aws}}}]", "user 'u' uses 'exec'"),
])
def test_node_with_an_unusable_kubeconfig_is_one_line_and_exit_two(
        tmp_path: Path, kubeconfig: str | None, message: str) -> None:
    path = tmp_path / "kubeconfig"
    if kubeconfig is not None:
        path.write_text("clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
                        f"{kubeconfig}\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]"
                        "\ncurrent-context: x\n", encoding="utf-8")
    result = steward("node", "--gpu-backend", "sim", "--listen", "127.0.0.1:0",
                     env={"KUBECONFIG": str(path)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("steward: ") and message in lines[0], lines[0]


def test_bad_flag_value_names_the_flag() -> None:
    result = steward("node", "--listen", "localhost:http")
    assert result.returncode == 2
    assert "--listen (node.listen)" in result.stderr


def test_bad_env_override_names_the_variable() -> None:
    result = steward("node", env={"STEWARD_NODE__GPU_BACKEND": "rocm"})
    assert result.returncode == 2
    assert result.stderr.startswith(
        "steward: config error: STEWARD_NODE__GPU_BACKEND (node.gpu_backend):")


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.integration  # starts `steward node`
def test_nvml_missing_still_serves_and_logs_once(tmp_path: Path) -> None:
    """No GPU driver on this machine: the real NVML path must degrade, not crash-loop."""
    node = start_node(
        tmp_path, args=("--gpu-backend", "nvml"),
        config="node: {collect_interval_seconds: 0.1, nvml_retry_seconds: 0.1}\n",
        env={"SLACK_BOT_TOKEN": "xoxb-secret-value-123"})
    try:
        wait_until(lambda: _errors(node.url) >= 5, timeout=15, what="five failed NVML retries")
        body = _metrics(node.url)
        assert metric_value(body, "steward_collector_up", collector="gpu") == 0
        assert metric_value(body, "steward_collector_up", collector="xid_events") == 0
        assert "steward_gpu_up" not in body
        assert node.process.poll() is None
    finally:
        assert node.stop() == 0
    records = [json.loads(line) for line in node.log().splitlines()]
    nvml_errors = [r for r in records if r["level"] == "error" and "NVML unavailable" in r["msg"]]
    assert len(nvml_errors) == 1, records
    # ... and it is the only error line: the collectors that fail because of it (gpu,
    # xid_events, attribution) do not each say so again (the README promises one line).
    assert [r for r in records if r["level"] in ("error", "warning")] == nvml_errors
    assert "libnvidia-ml" in nvml_errors[0]["msg"] or "Library Not Found" in nvml_errors[0]["msg"]
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert "xoxb-secret-value-123" not in node.log()


def _errors(url: str) -> float:
    return metric_value(_metrics(url), "steward_collector_errors_total", collector="gpu",
                        error="nvml_unavailable") or 0.0


@pytest.mark.integration  # starts `steward node`
def test_text_log_format(tmp_path: Path) -> None:
    node = start_node(tmp_path, args=("--gpu-backend", "sim", "--log-format", "text"))
    assert node.stop() == 0
    first = node.log().splitlines()[0]
    assert "INFO" in first and not first.startswith("{")


# -- Input from outside: bounded, one line, never a secret, never a traceback --------------

def test_alias_bomb_config_is_one_line_in_well_under_a_second(tmp_path: Path) -> None:
    from tests.test_config import BOMB

    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB, encoding="utf-8")
    started = time.monotonic()
    result = steward("node", "--config", str(config), "--gpu-backend", "sim")
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"steward: config error: config file {config}: more than 100000 values once its "
        "aliases are expanded"]
    assert elapsed < 5  # the interpreter's start-up included; the check itself is < 0.5 s


def test_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("slack: {default_channel: '#caf\u00e9'}\n".encode("latin-1"))
    result = steward("notifier", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"steward: config error: config file {config}: not UTF-8 text (byte 0xe9 at offset 30)"]


def test_secret_in_a_bad_value_is_not_echoed() -> None:
    result = steward("notifier", env={"STEWARD_SLACK__TOKEN": "[xoxb-leaked-123]"})
    assert result.returncode == 2
    assert "xoxb" not in result.stderr
    assert result.stderr.startswith(
        "steward: config error: STEWARD_SLACK__TOKEN (slack.token): ")


def test_read_only_state_directory_is_one_line_exit_one() -> None:
    """``steward hygiene run`` (the CLI's main, forked as user nobody when run as root)
    with its state directory read-only."""
    import contextlib
    import io
    import shutil
    import tempfile

    # nobody may not read the interpreter here: what the command imports, imported first
    import agent.controller.hygiene.commands
    import agent.state  # noqa: F401
    from agent.cli import main
    from tests.support.privileges import as_unprivileged

    state = Path(tempfile.mkdtemp(prefix="steward-ro-state-"))
    try:
        state.chmod(0o555)
        config = state.parent / f"{state.name}.yaml"
        config.write_text(f"state: {{url: 'sqlite:///{state / 'steward-state.db'}'}}\n",
                          encoding="utf-8")
        config.chmod(0o644)

        def ask() -> str:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(["hygiene", "run", "stale-images", "--config", str(config)])
            return f"{code}\n{err.getvalue()}"

        code, *lines = as_unprivileged(ask, timeout=30).splitlines()
        assert code == "1"
        assert lines == [
            f"steward: state store {state / 'steward-state.db'}: cannot create files in "
            f"{state} (Permission denied): check the volume is mounted read-write and "
            "writable by this user"]
    finally:
        shutil.rmtree(state)
        (state.parent / f"{state.name}.yaml").unlink(missing_ok=True)


def test_missing_state_directory_is_one_line_exit_one(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"state: {{url: 'sqlite:///{tmp_path / 'gone' / 's.db'}'}}\n",
                      encoding="utf-8")
    result = steward("hygiene", "run", "stale-images", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"steward: state store {tmp_path / 'gone' / 's.db'}: directory {tmp_path / 'gone'} "
        "does not exist: check state.url and the volume mounted there"]


def test_slack_token_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(b"xoxb-\xff\xfe")
    config = tmp_path / "n.yaml"
    auth = tmp_path / "auth"
    auth.write_text("webhook-secret", encoding="utf-8")
    config.write_text(f"slack: {{token_file: {token_file}, default_channel: '#a'}}\n"
                      f"notifier: {{auth_token_file: {auth}}}\n"
                      f"state: {{url: 'sqlite:///{tmp_path / 's.db'}'}}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "SLACK_BOT_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "agent.cli", "notifier", "--config",
                             str(config)], capture_output=True, text=True, timeout=30,
                            env=env, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"steward: config error: slack.token_file: cannot read {token_file}: not UTF-8 text"]
