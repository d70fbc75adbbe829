"""Steward's configuration: one YAML file plus ``STEWARD_<SECTION>__<KEY>`` overrides.

Validated once at start-up. Unknown keys and bad values are a :class:`ConfigError` whose
lines each name the key (and the environment variable, when the value came from one).
The file and the overrides come from outside: their size, their YAML (aliases, nesting)
and every value an error echoes are bounded, and a secret's value is never echoed.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "STEWARD_"
CONFIG_ENV = "STEWARD_CONFIG"
SLACK_TOKEN_ENV = "SLACK_BOT_TOKEN"
_LISTEN_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]*):(?P<port>\d{1,5})$")

# Bounds on what a config file or an override may be. A real config is a few KiB with a
# few hundred YAML nodes; an alias bomb of 365 bytes expands to a billion, which took
# minutes and gigabytes to validate and echo before these limits.
MAX_FILE_BYTES: Final = 1024 * 1024
MAX_ENV_VALUE_BYTES: Final = 64 * 1024
MAX_YAML_NODES: Final = 100_000  # after expanding aliases
MAX_YAML_DEPTH: Final = 64
MAX_PROBLEMS: Final = 20
_MAX_SHOWN_VALUE: Final = 80  # characters of an offending value quoted in an error
_MAX_KEY: Final = 64  # characters of each key of the path named in an error
_MAX_MESSAGE: Final = 200
# Keys whose values are credentials, wherever they appear (``registries[].auth.password``,
# ``slack.token``): an error names the key and never quotes the value.
_SECRET_KEY_RE = re.compile(
    r"token|passw|secret|credential|api_?key|access_?key|private_?key|^auth$", re.IGNORECASE)


class ConfigError(Exception):
    """Bad configuration. Each entry of ``problems`` is one line naming a key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Section(BaseModel):
    """A config section: unknown keys are an error, values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_listen(value: str) -> str:
    match = _LISTEN_RE.match(value)
    # Port 0 asks the OS for a free port (tests, several agents on one machine).
    if not match or not 0 <= int(match["port"]) < 65536:
        raise ValueError("must be HOST:PORT with a port from 0 to 65535")
    return value


ListenAddress = Annotated[str, AfterValidator(_check_listen)]


# The simulated GPU scenarios; agent/sim/scenarios.py implements exactly these (it refuses
# to load otherwise), and config validation needs no import of the simulator.
SIM_SCENARIOS: Final = ("training", "idle_allocated", "idle_free", "bursty", "lost",
                        "xid_storm", "ecc_errors", "thermal_throttling", "mig",
                        "lost_shared", "lost_free",
                        "time_sliced", "kai_fraction", "hami")


class SimConfig(Section):
    """The simulated GPUs of ``--gpu-backend sim``: one scenario name per GPU."""

    gpus: list[str] = Field(
        default_factory=lambda: [
            "training", "training", "idle_allocated", "lost", "xid_storm", "ecc_errors",
            "thermal_throttling", "mig",
        ]
    )
    seed: int = 0
    model_name: str = "NVIDIA H100 80GB HBM3"
    # A GPU with the ``lost`` scenario falls off the bus this long after start.
    lost_after_seconds: float = Field(default=20.0, ge=0)
    # A GPU with the ``ecc_errors`` scenario reports its uncorrectable ECC error (XID 48)
    # and its row remap failure this long after start.
    ecc_after_seconds: float = Field(default=10.0, ge=0)
    # CPU-only filler pods (benchmarks: a node with 110 pods), and replacing them with new
    # ones every this many seconds (pod churn).
    extra_pods: int = Field(default=0, ge=0, le=10_000)
    pod_churn_seconds: float | None = Field(default=None, gt=0)

    @field_validator("gpus")
    @classmethod
    def _known_scenarios(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in SIM_SCENARIOS]
        if unknown:
            raise ValueError(
                f"unknown scenario {unknown[0]!r}; known: {', '.join(sorted(SIM_SCENARIOS))}"
            )
        if not value:
            raise ValueError("needs at least one GPU")
        return value


class NodeConfig(Section):
    listen: ListenAddress = "0.0.0.0:9400"
    gpu_backend: Literal["nvml", "sim"] = "nvml"
    # Name of the Kubernetes node; the DaemonSet sets NODE_NAME from the downward API.
    node_name: str = Field(default_factory=lambda: os.environ.get("NODE_NAME") or os.uname()[1])
    collect_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    # How often to retry nvmlInit() after it failed (driver not loaded yet, no GPU).
    nvml_retry_seconds: float = Field(default=60.0, gt=0)
    sim: SimConfig = Field(default_factory=SimConfig)
    # The kubelet PodResources API (mounted read-only from the host by the DaemonSet).
    pod_resources_socket: Path = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    attribution_timeout_seconds: float = Field(default=5.0, gt=0)
    # The host's /proc (hostPID, or a mount) for mapping GPU processes to pods.
    proc_root: Path = Path("/proc")


class ControllerConfig(Section):
    apply: bool = False
    listen: ListenAddress = "0.0.0.0:9401"
    collect_interval_seconds: float = Field(default=30.0, gt=0)
    # Leader election (client-go's defaults): only the Lease holder runs cluster work.
    lease_name: str = "steward-controller"
    lease_namespace: str = Field(default_factory=lambda: os.environ.get("POD_NAMESPACE")
                                 or "steward")
    identity: str = Field(default_factory=lambda: os.environ.get("POD_NAME")
                          or f"{os.uname()[1]}-{os.getpid()}")
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    renew_deadline_seconds: float = Field(default=10.0, gt=0)
    retry_period_seconds: float = Field(default=2.0, gt=0)
    # Node taints that mean "a remediation tool quarantined this node" (exported by the leader
    # as steward_node_remediation_taint, shown in GPU fault alerts and owner notices). The
    # defaults are the keys NVIDIA NVSentinel's fault-quarantine rulesets document; a plain
    # GPU pool taint (nvidia.com/gpu) is not one. Cordons are always shown.
    remediation_taint_keys: list[str] = Field(default_factory=lambda: [
        "nvidia.com/gpu-error", "nvidia.com/gpu-xid-error", "nvidia.com/gpu-nvlink-error",
        "nvidia.com/syslog-xid-error"])

    @model_validator(mode="after")
    def _election_timing(self) -> ControllerConfig:
        if not (self.retry_period_seconds < self.renew_deadline_seconds
                < self.lease_duration_seconds):
            raise ValueError("needs retry_period_seconds < renew_deadline_seconds < "
                             "lease_duration_seconds")
        return self


class HygieneJobConfig(Section):
    """What every hygiene job shares: schedule, mode, caps, exemptions, mark deadline."""

    enabled: bool = True
    schedule: str = "0 3 * * *"  # cron, in the controller's time zone
    # Apply needs both this and the controller in apply mode; dry-run otherwise.
    apply: bool = False
    # Also run when this controller becomes leader, not only at the next scheduled time.
    run_at_start: bool = False
    max_actions: int = Field(default=10, ge=0)
    max_percent: float = Field(default=20.0, ge=0, le=100)
    # Marked resources are swept this long after the mark, if still non-compliant.
    mark_hours: float = Field(default=24.0, ge=0)
    exempt_namespaces: list[str] = Field(default_factory=list)
    exempt_names: list[str] = Field(default_factory=list)  # glob patterns on the resource


class IdleGpusConfig(HygieneJobConfig):
    schedule: str = "*/30 * * * *"
    utilization_floor: float = Field(default=0.01, ge=0, le=1)
    window: str = "2h"  # PromQL duration the GPU must have stayed under the floor
    grace: str = "10m"  # metric lag: data this recent is not trusted to be complete
    # How often Prometheus scrapes the node agents. A GPU's utilization and allocation
    # samples must cover window + grace with no gap over 2.5 intervals, else it is skipped.
    scrape_interval: str = "30s"
    power_idle_watts: float | None = Field(default=None, gt=0)  # optional confirmation
    # What to do per workload kind: notify | scale_to_zero | delete (bare pods only).
    notebook_action: Literal["notify", "scale_to_zero"] = "scale_to_zero"
    workload_action: Literal["notify", "scale_to_zero"] = "scale_to_zero"
    job_action: Literal["notify"] = "notify"
    pod_action: Literal["notify", "delete"] = "notify"
    notebook_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/component": "notebook"})


class StaleImagesConfig(HygieneJobConfig):
    schedule: str = "0 3 * * *"
    min_age_days: float = Field(default=30, ge=0)
    unused_days: float = Field(default=30, ge=0)  # not pulled for this long (ECR)
    keep_newest: int = Field(default=10, ge=0)
    protected_tags: list[str] = Field(default_factory=lambda: [
        "latest", r"v?\d+\.\d+\.\d+"])  # regexes, full match


class OrphanedBucketsConfig(HygieneJobConfig):
    schedule: str = "0 4 * * *"
    owner_tags: list[str] = Field(default_factory=lambda: ["owner", "team"])
    teams: list[str] = Field(default_factory=list)  # owners that exist
    quiet_days: float = Field(default=90, ge=0)  # no object written for this long
    expire_non_empty: bool = False  # opt-in: lifecycle-expire objects of non-empty orphans
    expire_after_days: int = Field(default=30, ge=1)
    buckets: list[str] = Field(default_factory=list)  # glob patterns; empty = all
    # Namespaces whose Secret names and annotations (metadata only) are also read for bucket
    # references; none by default. The chart grants `secrets list` in exactly these
    # namespaces (hygiene.secrets.namespaces), never cluster-wide.
    secret_namespaces: list[str] = Field(default_factory=list)


class HygieneConfig(Section):
    # The global kill switch: here, or key ``kill_switch: "true"`` in the ConfigMap below
    # (read at the start of every run, so it works without a restart).
    kill_switch: bool = False
    kill_switch_configmap: str = "steward-hygiene"
    idle_gpus: IdleGpusConfig = Field(default_factory=IdleGpusConfig)
    stale_images: StaleImagesConfig = Field(default_factory=StaleImagesConfig)
    orphaned_buckets: OrphanedBucketsConfig = Field(default_factory=OrphanedBucketsConfig)


class NotifierActionsConfig(Section):
    # Slack interactivity (POST /slack/actions): on when a signing secret is configured
    # (slack.signing_secret_file or $SLACK_SIGNING_SECRET); every request is verified with it.
    # Who may click: empty means whoever Slack sends a click for (the members of the
    # channel the message is in); otherwise only these Slack user ids.
    allowed_users: list[str] = Field(default_factory=list)
    # Who may exempt a resource from hygiene: these Slack user ids, and the members of this
    # Slack user group (its id, S...; needs the usergroups:read scope).
    admin_users: list[str] = Field(default_factory=list)
    admin_group: str | None = None
    # Buttons on hygiene owner notices (Keep 7 days / Snooze 24 h / Exempt): the notifier
    # writes the owner's choice into the hygiene tables, so it must share state.url with
    # the controller (PostgreSQL). Read by both: the controller adds the buttons.
    hygiene_buttons: bool = False
    # Longest a hygiene deadline may be snoozed to, from the click (Snooze adds 24 h).
    snooze_max_hours: float = Field(default=72.0, gt=0, le=24 * 14)
    # "Acknowledge until Monday" ends at this hour (UTC) of the next Monday.
    monday_hour_utc: int = Field(default=9, ge=0, le=23)
    # A graph of the alert's expression over the last hour in its thread when it fires
    # (from prometheus.url). At most one per alert per hour.
    graphs: bool = True
    # The weekly digest of silences Steward created whose alert has resolved (cron, UTC),
    # to slack.default_channel. Empty: no digest.
    forgotten_silences_schedule: str = "0 9 * * 1"


class NotifierConfig(Section):
    listen: ListenAddress = "0.0.0.0:9500"
    # Bearer token Alertmanager must send (http_config.authorization in its receiver), or
    # $STEWARD_NOTIFIER_AUTH_TOKEN. Without either the notifier refuses to start.
    auth_token_file: Path | None = None
    # Run without a bearer token: anyone who reaches the port can page on-call. Logged as a
    # warning at every start.
    allow_unauthenticated: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Slack asks for about one message per second per channel.
    channel_pacing_seconds: float = Field(default=1.0, ge=0)
    retry_max_seconds: float = Field(default=300.0, gt=0)
    # Failed attempts (rendering, or Slack refusing the message or its channel) before an
    # alert group is dead-lettered and a plain notice sent instead. Slack being down or
    # rate limiting is retried without limit.
    max_attempts: int = Field(default=6, ge=1, le=100)
    # How often the store is read for work other replicas (or a replay) left.
    poll_seconds: float = Field(default=1.0, gt=0)
    # A "firing" for an alert the group already showed resolved (same or earlier start) is
    # ignored when it arrives within this many seconds of the resolution: an Alertmanager
    # HA peer that is behind. Later, it is taken as firing again. 0 turns this off.
    stale_firing_window_seconds: float = Field(default=300.0, ge=0)
    # Dashboard links cover the alert's start minus/plus this window.
    dashboard_window_minutes: int = Field(default=60, gt=0)
    actions: NotifierActionsConfig = Field(default_factory=lambda: NotifierActionsConfig())


class SlackRoute(Section):
    match: dict[str, str]
    channel: str


class SlackConfig(Section):
    api_url: str = "https://slack.com/api/"
    # Filled from $SLACK_BOT_TOKEN by load_config when the file and overrides leave it unset.
    token: SecretStr | None = None
    token_file: Path | None = None
    default_channel: str | None = None
    routes: list[SlackRoute] = Field(default_factory=list)
    # team -> channel: where the owner notice of a GPU fault goes, for the team of the
    # workload that was on the GPU (the `team` label of the alert: finops.team_label or
    # finops.namespace_teams, exported by the controller). A team not listed gets none.
    team_channels: dict[str, str] = Field(default_factory=dict)
    # The Slack app's signing secret (a mounted Secret), else $SLACK_SIGNING_SECRET: turns
    # on the notifier's POST /slack/actions (buttons). Never logged.
    signing_secret_file: Path | None = None

    def resolved_token(self) -> SecretStr | None:
        """The token from the environment or the mounted file; never logged."""
        if self.token is not None:
            return self.token
        if self.token_file is not None:
            raw = self.token_file.read_bytes()
            try:
                return SecretStr(raw.decode("utf-8").strip())
            except UnicodeDecodeError:
                # An OSError like any other unreadable file: callers name the key and go on.
                raise OSError(errno.EILSEQ, "not UTF-8 text", str(self.token_file)) from None
        return None


class PrometheusConfig(Section):
    url: str = "http://prometheus:9090"
    timeout_seconds: float = Field(default=30.0, gt=0)


class KubernetesConfig(Section):
    kubeconfig: Path | None = None
    context: str | None = None


class AwsConfig(Section):
    endpoint_url: str | None = None
    region: str | None = None


class RegistryConfig(Section):
    type: Literal["ecr", "oci"]
    url: str
    repositories: list[str] = Field(default_factory=list)
    auth: dict[str, str] = Field(default_factory=dict)


class FinopsConfig(Section):
    # USD per GPU-hour by NVML model name (steward_gpu_info's modelName).
    prices: dict[str, float] = Field(default_factory=dict)
    storage_usd_per_gb_month: float = Field(default=0.023, ge=0)
    team_label: str = "team"
    namespace_teams: dict[str, str] = Field(default_factory=dict)
    # Utilization under this floor counts as idle (not zero: idle GPUs read ~0.00x).
    idle_floor: float = Field(default=0.01, ge=0, le=1)
    step: str = "1h"  # resolution of the Prometheus range queries
    schedule: str = "0 8 * * 1"  # cron, in the controller's time zone: Monday 08:00
    slack_channel: str | None = None
    out_dir: Path = Path("finops-reports")


class StateConfig(Section):
    url: str = "sqlite:///steward-state.db"


class RunbooksConfig(Section):
    base_url: str = "https://github.com/steward-ops/steward/blob/main/runbooks"


class UrlConfig(Section):
    url: str | None = None


class AlertmanagerConfig(UrlConfig):
    # Where the notifier creates and expires silences (API v2), when it differs from the
    # url that links point people to (an in-cluster Service). Defaults to url.
    api_url: str | None = None

    def resolved_api_url(self) -> str | None:
        return self.api_url or self.url


class StewardConfig(Section):
    node: NodeConfig = Field(default_factory=NodeConfig)
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    notifier: NotifierConfig = Field(default_factory=NotifierConfig)
    hygiene: HygieneConfig = Field(default_factory=HygieneConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    aws: AwsConfig = Field(default_factory=AwsConfig)
    registries: list[RegistryConfig] = Field(default_factory=list)
    finops: FinopsConfig = Field(default_factory=FinopsConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    runbooks: RunbooksConfig = Field(default_factory=RunbooksConfig)
    grafana: UrlConfig = Field(default_factory=UrlConfig)
    alertmanager: AlertmanagerConfig = Field(default_factory=AlertmanagerConfig)


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, str]]:
    """``STEWARD_A__B=v`` -> {("a", "b"): ("STEWARD_A__B", "v")}. Needs a double underscore."""
    found: dict[tuple[str, ...], tuple[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        if any(not part for part in path):
            raise ConfigError([f"{name}: empty key in environment override name"])
        found[path] = (name, value)
    return found


def _env_value(raw: str) -> Any:
    # Scalars stay strings so that pydantic coerces them to the field's type ("10" -> 10,
    # "true" -> True) without YAML turning "0123" into an octal int. Lists and maps are
    # written as YAML/JSON flow: STEWARD_SLACK__ROUTES='[{match: {a: b}, channel: "#x"}]'.
    stripped = raw.strip()
    if stripped.startswith(("[", "{")):
        return _load_yaml(stripped)
    return raw


_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _shape_problem(root: yaml.Node) -> str | None:
    """Why ``root`` is too big once its aliases are expanded (None when it is fine).

    An alias is a reference to a node already read, so the expanded size and depth are
    counted once per distinct node: linear in the file, whatever the aliases multiply to.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = _children(node)
            size[key] = 1 + sum(size[id(kid)] for kid in kids)
            depth[key] = 1 + max((depth[id(kid)] for kid in kids), default=0)
            on_path.discard(key)
            if size[key] > MAX_YAML_NODES:
                return f"more than {MAX_YAML_NODES} values once its aliases are expanded"
            if depth[key] > MAX_YAML_DEPTH:
                return f"nested deeper than {MAX_YAML_DEPTH} levels"
            continue
        if key in size:
            continue
        if key in on_path:
            return "an alias refers to the node that contains it"
        on_path.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node) if id(kid) not in size)
    return None


class _YamlTooBig(yaml.YAMLError):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses alias bombs and deep nesting before building them."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise _YamlTooBig(f"nested deeper than {MAX_YAML_DEPTH} levels") from None
        if node is None:
            return None
        problem = _shape_problem(node)
        if problem is not None:
            raise _YamlTooBig(problem)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _merge_override(data: dict[str, Any], path: tuple[str, ...], value: Any, source: str) -> None:
    node = data
    for depth, key in enumerate(path[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            dotted = ".".join(path[: depth + 1])
            raise ConfigError([f"{source}: {dotted} is not a section"])
        node = child
    node[path[-1]] = value


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _secret_field(loc: tuple[str, ...]) -> bool:
    """Whether ``loc`` names a credential: a SecretStr field or a key named like one."""
    if any(_SECRET_KEY_RE.search(part) for part in loc):
        return True
    model: Any = StewardConfig
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        if annotation is SecretStr or SecretStr in get_args(annotation):
            return True
        model = next((arg for arg in (annotation, *get_args(annotation))
                      if isinstance(arg, type) and issubclass(arg, BaseModel)), None)
    return False


def _format_error(err: Mapping[str, Any], env_keys: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(str(part) for part in err["loc"])
    dotted = ".".join(_clip(part, _MAX_KEY) for part in loc) or "(top level)"
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "missing":
        message = "required key is missing"
    env_name = next((name for path, name in env_keys.items() if loc[: len(path)] == path), None)
    where = f"{env_name} ({dotted})" if env_name else dotted
    value = err.get("input")
    # Only a plain scalar is quoted, clipped, and never a credential's: a list or a map
    # may hold a token one level down, and any value may be megabytes long.
    quote = err["type"] not in {"extra_forbidden", "missing"} and \
        isinstance(value, str | int | float | bool) and not _secret_field(loc)
    shown = f" (got {_clip(repr(value), _MAX_SHOWN_VALUE)})" if quote else ""
    return f"{where}: {_clip(message, _MAX_MESSAGE)}{shown}"


def _problems(exc: ValidationError, env_keys: Mapping[tuple[str, ...], str]) -> list[str]:
    errors = exc.errors()
    problems = [_format_error(err, env_keys) for err in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"... and {len(errors) - MAX_PROBLEMS} more problems")
    return problems


def _read_file(file_path: Path) -> str:
    try:
        with file_path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"config file {file_path}: {exc.strerror or exc}"]) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([f"config file {file_path}: larger than the {MAX_FILE_BYTES} "
                           "byte limit"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config file {file_path}: not UTF-8 text (byte "
                           f"0x{raw[exc.start]:02x} at offset {exc.start})"]) from None


def load_config(path: Path | str | None = None, *,
                environ: Mapping[str, str] | None = None) -> StewardConfig:
    """Read ``path`` (or ``$STEWARD_CONFIG``), apply environment overrides, validate."""
    env = os.environ if environ is None else environ
    file_path = Path(path) if path is not None else (
        Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None
    )
    data: dict[str, Any] = {}
    if file_path is not None:
        text = _read_file(file_path)
        try:
            loaded = _load_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise ConfigError([f"config file {file_path}{where}: "
                               f"{_clip(str(problem), _MAX_MESSAGE)}"]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"config file {file_path}: top level must be a mapping"])
        data = loaded

    overrides = _env_overrides(env)
    for key_path, (name, raw) in sorted(overrides.items()):
        if len(raw) > MAX_ENV_VALUE_BYTES:
            raise ConfigError([f"{name}: longer than the {MAX_ENV_VALUE_BYTES} character "
                               "limit"])
        try:
            value = _env_value(raw)
        except _YamlTooBig as exc:
            raise ConfigError([f"{name}: {exc.problem}"]) from None
        except yaml.YAMLError:
            raise ConfigError([f"{name}: not valid YAML flow syntax"]) from None
        _merge_override(data, key_path, value, name)

    slack = data.get("slack")
    if env.get(SLACK_TOKEN_ENV) and (slack is None or isinstance(slack, dict)) and \
            not (slack or {}).get("token"):
        data.setdefault("slack", {})["token"] = env[SLACK_TOKEN_ENV]
    try:
        return StewardConfig.model_validate(data)
    except ValidationError as exc:
        env_keys = {key_path: name for key_path, (name, _) in overrides.items()}
        raise ConfigError(_problems(exc, env_keys)) from None


def with_overrides(config: StewardConfig, overrides: Mapping[str, tuple[str, Any]]
                   ) -> StewardConfig:
    """Apply command-line flags: ``{"node.listen": ("--listen", value)}``; None is skipped.

    Flags win over the file and the environment, and are validated like any other source,
    with the flag named in the error.
    """
    data = config.model_dump()
    flags: dict[tuple[str, ...], str] = {}
    for dotted, (flag, value) in overrides.items():
        if value is None:
            continue
        path = tuple(dotted.split("."))
        _merge_override(data, path, value, flag)
        flags[path] = flag
    if not flags:
        return config
    try:
        return StewardConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, flags)) from None
