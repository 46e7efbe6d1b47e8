"""docker-compose.yml and the Dockerfile agree with the code: commands, settings, queues, health.

No Docker needed: the files are parsed and checked against `service.cli.build_parser()` and
`service.config.Settings`.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.config import Settings
from service.queue import QUEUES

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {
    "api",
    "migrate",
    "worker-cpu",
    "worker-gpu",
    "postgres",
    "redis",
    "minio",
    "flower",
    "prometheus",
    "grafana",
}
THERMOML_SERVICES = {"api", "migrate", "worker-cpu", "worker-gpu"}
ONE_SHOT = {"migrate"}
SUBSTITUTION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the anchors, aliases and `<<` merge keys the file uses.
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def resolve(value: str) -> str:
    """What compose makes of `${VAR:-default}` when VAR is unset; a plain `${VAR}` is refused."""

    def default(match: re.Match[str]) -> str:
        assert match["default"] is not None, f"{match[0]} has no default in {value!r}"
        return match["default"]

    return SUBSTITUTION.sub(default, value).replace("$$", "$")


def argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): resolve(str(v)) for k, v in env.items()}


def parse_thermoml(args: list[str]) -> argparse.Namespace:
    assert args[:1] == ["thermoml"], args
    try:
        return build_parser().parse_args(args[1:])
    except SystemExit as exc:  # argparse exits on an unknown subcommand or option
        pytest.fail(f"`{shlex.join(args)}` is refused by service.cli.build_parser() ({exc})")


def subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("build_parser() has no subcommands")


def test_services_are_the_designed_ten(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


def test_thermoml_commands_exist_in_the_cli(services: dict[str, Any]) -> None:
    known = subcommands()
    assert {"api", "worker", "migrate"} <= known
    running_thermoml = {name for name, svc in services.items() if argv(svc)[:1] == ["thermoml"]}
    assert running_thermoml == THERMOML_SERVICES
    for name in sorted(running_thermoml):
        args = argv(services[name])
        assert len(args) >= 2 and args[1] in known, f"{name}: {args} is not a thermoml subcommand"
        assert parse_thermoml(args).command == args[1]


def test_each_service_runs_the_right_subcommand(services: dict[str, Any]) -> None:
    api = parse_thermoml(argv(services["api"]))
    assert (api.command, api.host, api.port) == ("api", "0.0.0.0", 8000)
    assert "8000:8000" in [str(p) for p in services["api"]["ports"]]
    assert parse_thermoml(argv(services["migrate"])).command == "migrate"
    for name, queue in (("worker-cpu", "cpu"), ("worker-gpu", "gpu")):
        worker = parse_thermoml(argv(services[name]))
        assert worker.command == "worker"
        assert worker.queues.split(",") == [queue], f"{name} consumes {worker.queues}"
        assert queue in QUEUES


def nvidia_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    devices = deploy.get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if d.get("driver") == "nvidia"]


def test_gpu_worker_reserves_nvidia_devices_and_builds_the_gpu_extra(
    services: dict[str, Any],
) -> None:
    gpu = services["worker-gpu"]
    devices = nvidia_devices(gpu)
    assert len(devices) == 1, gpu.get("deploy")
    assert devices[0]["count"] == "all"
    assert "gpu" in devices[0]["capabilities"]
    assert gpu["build"]["args"]["EXTRAS"] == "gpu"
    assert gpu["image"] != services["worker-cpu"]["image"], "the GPU image needs its own tag"
    cpu = services["worker-cpu"]
    assert nvidia_devices(cpu) == []
    assert "EXTRAS" not in (cpu["build"].get("args") or {})


def test_thermoml_variables_are_settings_fields(services: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    seen = set()
    for name, svc in services.items():
        for key in environment(svc):
            if key.startswith("THERMOML_"):
                seen.add(key)
                field = key.removeprefix("THERMOML_").lower()
                assert field in fields, f"{name}: {key} is not a field of Settings"
    # Also anywhere else in the file: `${THERMOML_...}` substitutions, anchors, comments.
    for key in set(re.findall(r"\bTHERMOML_[A-Z0-9_]+", COMPOSE_FILE.read_text())):
        assert key.removeprefix("THERMOML_").lower() in fields, f"{key} is not a Settings field"
    assert {
        "THERMOML_DATABASE_URL",
        "THERMOML_BROKER_URL",
        "THERMOML_ARTIFACT_URI",
        "THERMOML_DATA_DIR",
    } <= seen


def test_thermoml_services_share_the_production_environment(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert "x-thermoml-env" in compose
    shared = {k: resolve(str(v)) for k, v in compose["x-thermoml-env"].items()}
    for name in THERMOML_SERVICES:
        env = environment(services[name])
        assert env == shared, f"{name} does not use the x-thermoml-env anchor"

    assert shared["THERMOML_BROKER_URL"] == "redis://redis:6379/0"
    assert shared["THERMOML_ARTIFACT_URI"] == "s3://thermoml-artifacts"
    assert shared["THERMOML_DATA_DIR"] == "/var/lib/thermoml"
    assert shared["AWS_ENDPOINT_URL"] == "http://minio:9000"

    postgres = environment(services["postgres"])
    user, password, db = (
        postgres[k] for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
    )
    assert shared["THERMOML_DATABASE_URL"] == (
        f"postgresql+psycopg://{user}:{password}@postgres:5432/{db}"
    )
    assert shared["THERMOML_DATABASE_URL"] == (
        "postgresql+psycopg://thermoml:thermoml@postgres:5432/thermoml"
    )
    minio = environment(services["minio"])
    assert shared["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert shared["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    # Settings accepts the environment as a whole.
    settings = Settings(
        **{
            k.removeprefix("THERMOML_").lower(): v
            for k, v in shared.items()
            if k.startswith("THERMOML_")
        }
    )
    assert not settings.embedded_broker


def test_secrets_come_from_substitution_with_a_default(services: dict[str, Any]) -> None:
    raw = {
        "postgres": services["postgres"]["environment"]["POSTGRES_PASSWORD"],
        "minio user": services["minio"]["environment"]["MINIO_ROOT_USER"],
        "minio password": services["minio"]["environment"]["MINIO_ROOT_PASSWORD"],
        "aws secret": services["api"]["environment"]["AWS_SECRET_ACCESS_KEY"],
        "grafana password": services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"],
    }
    for what, value in raw.items():
        assert SUBSTITUTION.fullmatch(value), f"{what}: {value!r} is not ${{VAR:-default}}"
    assert "${POSTGRES_PASSWORD:-" in services["api"]["environment"]["THERMOML_DATABASE_URL"]
    assert len(resolve(raw["minio password"])) >= 8, "MinIO refuses root passwords under 8 chars"


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT:
            continue
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_specific_healthchecks(services: dict[str, Any]) -> None:
    def text(name: str) -> str:
        return " ".join(services[name]["healthcheck"]["test"])

    assert "pg_isready" in text("postgres")
    assert "redis-cli ping" in text("redis")
    assert "mc ready" in text("minio")
    api = text("api")
    assert "urllib" in api and "/readyz" in api and ":8000" in api
    assert "curl" not in api
    for worker in ("worker-cpu", "worker-gpu"):
        check = services[worker]["healthcheck"]["test"]
        assert check[:3] == ["CMD", "python", "-c"]
        compile(check[3], f"{worker} healthcheck", "exec")
        assert "control.ping" in check[3]


def test_migrate_is_one_shot_and_gates_api_and_workers(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert migrate["restart"] == "no"  # the string: an unquoted YAML `no` would be False
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "ports" not in migrate
    for name in ("api", "worker-cpu", "worker-gpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert services[name].get("restart") != "no", name


def test_stateful_services_keep_data_in_named_volumes(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, path in (
        ("postgres", "/var/lib/postgresql/data"),
        ("redis", "/data"),
        ("minio", "/data"),
    ):
        mounts = dict(str(v).split(":", 1) for v in services[name]["volumes"])
        targets = {target: source for source, target in mounts.items()}
        assert targets.get(path) in declared, f"{name}: {path} is not on a named volume"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    redis_cmd = argv(services["redis"])
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"


def test_flower_watches_the_same_broker(compose: dict[str, Any], services: dict[str, Any]) -> None:
    flower = services["flower"]
    cmd = " ".join(argv(flower))
    assert "flower" in cmd
    assert f"--broker={resolve(compose['x-thermoml-env']['THERMOML_BROKER_URL'])}" in cmd
    assert any(str(p).endswith("5555:5555") for p in flower["ports"])
    # Flower 2.x refuses its HTTP API without authentication unless told otherwise.
    assert environment(flower).get("FLOWER_UNAUTHENTICATED_API") == "true"


def test_workers_send_events_and_heartbeats_for_flower() -> None:
    from service.config import Settings
    from service.queue import celery_config

    config = celery_config(Settings(broker_url="redis://redis:6379/0"))
    assert config["worker_send_task_events"] is True
    assert config["task_send_sent_event"] is True


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_default_command_is_a_thermoml_subcommand() -> None:
    assert DOCKERFILE.is_file()
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    cmds = [rest for word, rest in steps if word == "CMD"]
    assert cmds, "no CMD"
    cmd = json.loads(cmds[-1])  # exec form, so that signals reach thermoml
    args = parse_thermoml(cmd)
    assert args.command == "api" and args.host == "0.0.0.0"


def test_dockerfile_installs_extras_and_drops_root() -> None:
    steps = dockerfile_instructions()
    assert ("ARG", 'EXTRAS=""') in steps
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert 'pip install ".${EXTRAS:+[$EXTRAS]}"' in runs
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"


def test_the_stack_runs_with_auth_and_a_bootstrap_admin_key(
    services: dict[str, dict[str, Any]],
) -> None:
    env = environment(services["api"])
    assert env["THERMOML_AUTH"] == "required"
    key = resolve(env["THERMOML_BOOTSTRAP_ADMIN_KEY"])
    assert len(key) >= 16  # Settings.bootstrap_admin_key's minimum
    Settings(bootstrap_admin_key=key, auth="required")
