"""Configuration: file + STEWARD_* overrides, one clear line per problem naming the key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, with_overrides


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "steward.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file() -> None:
    config = load_config(None, environ={})
    assert config.prometheus.url == "http://prometheus:9090"
    assert config.node.gpu_backend == "nvml"
    assert config.state.url == "sqlite:///steward-state.db"
    assert config.slack.routes == []


def test_file_values_and_nested_sections(tmp_path: Path) -> None:
    path = write(tmp_path, """
node:
  collect_interval_seconds: 2.5
  sim: {gpus: [training, lost], seed: 7}
slack:
  routes: [{match: {severity: critical}, channel: "#oncall"}]
""")
    config = load_config(path, environ={})
    assert config.node.collect_interval_seconds == 2.5
    assert config.node.sim.gpus == ["training", "lost"]
    assert config.slack.routes[0].channel == "#oncall"


def test_env_overrides_win_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "prometheus: {url: http://file:9090}\n")
    config = load_config(path, environ={
        "STEWARD_PROMETHEUS__URL": "http://env:9090",
        "STEWARD_NODE__COLLECT_INTERVAL_SECONDS": "3",
        "STEWARD_NODE__SIM__GPUS": "[idle_allocated]",
        "STEWARD_CONFIG_UNRELATED": "ignored: no double underscore",
    })
    assert config.prometheus.url == "http://env:9090"
    assert config.node.collect_interval_seconds == 3.0
    assert config.node.sim.gpus == ["idle_allocated"]


def test_steward_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "prometheus: {url: http://from-env-file:9090}\n")
    assert load_config(None, environ={"STEWARD_CONFIG": str(path)}).prometheus.url == \
        "http://from-env-file:9090"


def test_env_string_is_not_reinterpreted_as_yaml() -> None:
    # YAML 1.1 would read 0123 as an octal int; a token-like string must stay a string.
    config = load_config(None, environ={"STEWARD_SLACK__DEFAULT_CHANNEL": "0123"})
    assert config.slack.default_channel == "0123"


@pytest.mark.parametrize(("text", "expected"), [
    ("node: {colect_interval_seconds: 5}\n", "node.colect_interval_seconds: unknown key"),
    ("bogus: 1\n", "bogus: unknown key"),
    ("node: {collect_interval_seconds: -1}\n", "node.collect_interval_seconds: "),
    ("node: {gpu_backend: cuda}\n", "node.gpu_backend: "),
    ("node: {listen: 'nohost'}\n", "node.listen: "),
    ("node: {sim: {gpus: [training, warp_drive]}}\n", "unknown scenario 'warp_drive'"),
    ("registries: [{type: gcr, url: x}]\n", "registries.0.type: "),
])
def test_bad_file_values_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert len(info.value.problems) == 1
    assert expected in info.value.problems[0]


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"STEWARD_NODE__COLLECT_INTERVAL_SECONDS": "soon"})
    problem = info.value.problems[0]
    assert problem.startswith(
        "STEWARD_NODE__COLLECT_INTERVAL_SECONDS (node.collect_interval_seconds):")
    assert "'soon'" in problem


def test_unknown_env_key_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"STEWARD_PROMETHEUS__URI": "http://x"})
    assert info.value.problems == ["STEWARD_PROMETHEUS__URI (prometheus.uri): unknown key"]


def test_env_override_into_a_scalar_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"STEWARD_STATE__URL__X: state\.url is not a section"):
        load_config(None, environ={"STEWARD_STATE__URL": "sqlite://", "STEWARD_STATE__URL__X": "1"})


@pytest.mark.parametrize(("text", "expected"), [
    ("node: [unclosed\n", "line 2"),
    ("- a list\n", "top level must be a mapping"),
])
def test_unreadable_files(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text), environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_flag_overrides_are_validated_and_named() -> None:
    config = load_config(None, environ={})
    updated = with_overrides(config, {"node.listen": ("--listen", "127.0.0.1:9999"),
                                      "node.gpu_backend": ("--gpu-backend", None)})
    assert updated.node.listen == "127.0.0.1:9999"
    assert updated.node.gpu_backend == "nvml"
    with pytest.raises(ConfigError) as info:
        with_overrides(config, {"node.listen": ("--listen", "127.0.0.1:99999")})
    assert info.value.problems[0].startswith("--listen (node.listen):")


@pytest.mark.parametrize("variable", ["SLACK_BOT_TOKEN", "STEWARD_SLACK__TOKEN"])
def test_slack_token_from_env_is_secret(variable: str) -> None:
    config = load_config(None, environ={variable: "xoxb-not-for-logs"})
    token = config.slack.resolved_token()
    assert token is not None and token.get_secret_value() == "xoxb-not-for-logs"
    assert "xoxb-not-for-logs" not in repr(config)
    assert "xoxb-not-for-logs" not in str(config.model_dump())


def test_slack_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("xoxb-from-file\n", encoding="utf-8")
    config = load_config(write(tmp_path, f"slack: {{token_file: {token_file}}}\n"),
                         environ={})
    token = config.slack.resolved_token()
    assert token is not None and token.get_secret_value() == "xoxb-from-file"


# -- Input from outside is bounded, and a secret's value is never echoed -----------------

BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True))


def _problem(path: Path | None, environ: dict[str, str]) -> tuple[str, float]:
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ)
    elapsed = time.perf_counter() - started
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0], elapsed


@pytest.mark.parametrize(("value", "where"), [
    ("slack: {token: [xoxb-super-secret-123]}\n", "slack.token"),
    ("slack: {token: {a: xoxb-super-secret-123}}\n", "slack.token"),
    ("registries: [{type: oci, url: r, auth: {password: [xoxb-super-secret-123]}}]\n",
     "registries.0.auth.password"),
    ("registries: [{type: oci, url: r, auth: {password: 123}}]\n",
     "registries.0.auth.password"),
    ("slack: [xoxb-super-secret-123]\n", "slack"),
])
def test_errors_never_echo_a_secret(tmp_path: Path, value: str, where: str) -> None:
    problem, _ = _problem(write(tmp_path, value), {})
    assert problem.startswith(f"{where}: "), problem
    assert "xoxb" not in problem and "123" not in problem.removeprefix(where)


@pytest.mark.parametrize("raw", ["[xoxb-super-secret-123]", "{t: xoxb-super-secret-123}"])
def test_env_errors_never_echo_a_secret(raw: str) -> None:
    problem, _ = _problem(None, {"STEWARD_SLACK__TOKEN": raw})
    assert problem.startswith("STEWARD_SLACK__TOKEN (slack.token): ")
    assert "xoxb" not in problem


def test_ordinary_values_are_still_quoted(tmp_path: Path) -> None:
    problem, _ = _problem(write(tmp_path, "node: {gpu_backend: cuda}\n"), {})
    assert problem.endswith("(got 'cuda')")


def test_alias_bomb_fails_fast(tmp_path: Path) -> None:
    path = write(tmp_path, BOMB)
    assert path.stat().st_size < 400
    problem, elapsed = _problem(path, {})
    assert elapsed < 0.5
    assert problem == (f"config file {path}: more than 100000 values once its aliases are "
                       "expanded")


def test_alias_bomb_in_an_environment_override_fails_fast() -> None:
    flow = "{" + BOMB.replace("\n", ", ").rstrip(", ") + "}"
    problem, elapsed = _problem(None, {"STEWARD_FINOPS__NAMESPACE_TEAMS": flow})
    assert elapsed < 0.5
    assert problem == ("STEWARD_FINOPS__NAMESPACE_TEAMS: more than 100000 values once its "
                       "aliases are expanded")


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    problem, _ = _problem(write(tmp_path, "node: &a {sim: *a}\n"), {})
    assert problem.endswith("an alias refers to the node that contains it")


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    deep = "".join(f"{'  ' * i}k{i}:\n" for i in range(100)) + f"{'  ' * 100}v: 1\n"
    problem, elapsed = _problem(write(tmp_path, deep), {})
    assert elapsed < 0.5
    assert problem.endswith("nested deeper than 64 levels")


def test_small_aliases_still_work(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
hygiene:
  idle_gpus: {exempt_namespaces: &system [kube-system, monitoring]}
  stale_images: {exempt_namespaces: *system}
"""), environ={})
    assert config.hygiene.stale_images.exempt_namespaces == ["kube-system", "monitoring"]


def test_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as handle:
        handle.write(b"slack: {default_channel: '")
        handle.truncate(100 * 1024 * 1024)
    problem, elapsed = _problem(path, {})
    assert elapsed < 0.5
    assert problem == f"config file {path}: larger than the 1048576 byte limit"


def test_huge_value_is_clipped_in_the_error(tmp_path: Path) -> None:
    path = write(tmp_path, f"node: {{gpu_backend: {'x' * 900_000}}}\n")
    problem, elapsed = _problem(path, {})
    assert elapsed < 0.5
    assert len(problem) < 400
    assert problem.startswith("node.gpu_backend: ") and "(900002 characters)" in problem


def test_huge_environment_value_is_refused() -> None:
    problem, elapsed = _problem(None, {"STEWARD_SLACK__DEFAULT_CHANNEL": "x" * 100_000_000})
    assert elapsed < 0.5
    assert problem == ("STEWARD_SLACK__DEFAULT_CHANNEL: longer than the 65536 character "
                       "limit")


def test_huge_unknown_key_is_clipped(tmp_path: Path) -> None:
    problem, _ = _problem(write(tmp_path, f"? {'k' * 500_000}\n: 1\n"), {})
    assert len(problem) < 200 and problem.endswith(": unknown key")


def test_many_problems_are_capped(tmp_path: Path) -> None:
    text = "".join(f"key{i}: 1\n" for i in range(500))
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert len(info.value.problems) == 21
    assert info.value.problems[-1] == "... and 480 more problems"


def test_config_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("slack: {default_channel: '#caf\u00e9'}\n".encode("latin-1"))
    problem, _ = _problem(path, {})
    assert problem == f"config file {path}: not UTF-8 text (byte 0xe9 at offset 30)"


def test_token_file_that_is_not_utf8_is_an_os_error(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(b"xoxb-\xff\xfe")
    config = load_config(write(tmp_path, f"slack: {{token_file: {token_file}}}\n"),
                         environ={})
    with pytest.raises(OSError) as info:
        config.slack.resolved_token()
    assert info.value.strerror == "not UTF-8 text"
    assert "xoxb" not in str(info.value)
