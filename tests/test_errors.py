"""Every command fails the same way: its stderr is JSON log lines (or nothing) and then one
``steward: <what failed>: <what to check>`` line, exit code 1. No library warning, retry
chatter or raw connection-pool text reaches the terminal."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import urllib3

from agent.errors import RuntimeFailure, plain_cause
from tests.support.net import free_port


def steward(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("STEWARD_") and k not in ("KUBECONFIG", "SLACK_BOT_TOKEN")}
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, check=False, timeout=120, env={**clean, **(env or {})},
                          cwd=cwd)


def json_lines_then_one_steward_line(stderr: str) -> str:
    """Assert the shape; return the last line."""
    lines = stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    *logs, last = lines
    for line in logs:
        record = json.loads(line)  # raises on raw text between the JSON lines
        assert {"ts", "level", "logger", "msg"} <= record.keys(), line
    assert last.startswith("steward: "), last
    assert ": check" in last or "check " in last, last
    for noise in ("Retrying (Retry(", "HTTPConnectionPool", "HTTPSConnectionPool",
                  "Traceback", "NewConnectionError"):
        assert noise not in stderr, noise
    return last


@pytest.mark.slow  # over 2 s of waiting: the full suite runs it
def test_report_without_prometheus(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = steward("report", "finops", "--out", str(tmp_path / "r"),
                     env={"STEWARD_PROMETHEUS__URL": f"http://127.0.0.1:{port}",
                          "STEWARD_STATE__URL": f"sqlite:///{tmp_path / 'state.db'}"})
    assert result.returncode == 1
    last = json_lines_then_one_steward_line(result.stderr)
    assert last == (f"steward: FinOps report: cannot reach Prometheus at http://127.0.0.1:"
                    f"{port}: connection refused: check prometheus.url "
                    "(STEWARD_PROMETHEUS__URL), or report from an export with --parquet FILE")
    assert not (tmp_path / "r").exists()


def unreachable_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: not-a-real-token}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
        encoding="utf-8")
    return path


def test_hygiene_against_an_unreachable_cluster_has_no_retry_chatter(tmp_path: Path) -> None:
    kubeconfig = unreachable_kubeconfig(tmp_path / "kubeconfig",
                                        f"https://127.0.0.1:{free_port()}")
    result = steward("hygiene", "run", "stale-images",
                     env={"KUBECONFIG": str(kubeconfig),
                          "STEWARD_STATE__URL": f"sqlite:///{tmp_path / 'state.db'}"})
    assert result.returncode == 1
    assert "Retrying" not in result.stderr
    lines = result.stderr.strip().splitlines()
    for line in lines[:-1]:
        json.loads(line)
    assert lines[-1].startswith("steward: hygiene stale-images")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server with a self-signed certificate that answers 500 to everything."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"kind":"Status","status":"Failure","message":"boom","code":500}'
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_insecure_kubeconfig_warnings_are_json_lines(tmp_path: Path, tls_server: str) -> None:
    kubeconfig = unreachable_kubeconfig(tmp_path / "kubeconfig", tls_server)
    result = steward("hygiene", "run", "stale-images",
                     env={"KUBECONFIG": str(kubeconfig),
                          "STEWARD_STATE__URL": f"sqlite:///{tmp_path / 'state.db'}"})
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    records = [json.loads(line) for line in lines[:-1]]  # none is raw warning text
    warned = [r for r in records if "InsecureRequestWarning" in r["msg"]]
    assert warned and all(r["logger"] == "py.warnings" for r in warned), records
    assert lines[-1].startswith("steward: hygiene stale-images")


@pytest.mark.slow  # over 2 s of waiting: the full suite runs it
def test_simulated_gpus_never_claim_a_driver(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    result = steward("build", "--check", "--root", str(root), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "NVML initialised" not in result.stderr and "550.90.07" not in result.stderr


def test_an_unexpected_error_still_ends_with_the_one_line(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    from agent import cli

    def broken(args: object, config: object) -> int:
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "_cmd_build", broken)
    assert cli.main(["build", "--log-format", "json"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("steward: build failed: KeyError: 'surprise': the log line above has the "
                    "traceback")


def test_a_runtime_failure_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from agent import cli

    def failing(args: object, config: object) -> int:
        raise RuntimeFailure("reading the thing", "check thing.url")

    monkeypatch.setattr(cli, "_cmd_build", failing)
    assert cli.main(["build"]) == 1
    assert capsys.readouterr().err == "steward: reading the thing: check thing.url\n"


def test_plain_cause_names_what_a_person_can_fix() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(requests.RequestException) as refused:
        requests.get(f"http://127.0.0.1:{closed}/", timeout=5)
    assert plain_cause(refused.value) == "connection refused"
    conn = urllib3.connection.HTTPConnection("prometheus.example", 9090)
    resolution = urllib3.exceptions.NameResolutionError(
        "prometheus.example", conn, socket.gaierror(-2, "Name or service not known"))
    wrapped = requests.ConnectionError(urllib3.exceptions.MaxRetryError(
        None, "/api/v1/query_range", resolution))  # type: ignore[arg-type]
    assert plain_cause(wrapped) == "cannot resolve host 'prometheus.example'"
    assert plain_cause(ValueError("line one\nline two")) == "line one"
