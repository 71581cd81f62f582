"""The backbone wired into runs: config, credentials, runtime_for, the ServerApp's child service, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from omegaconf import DictConfig

from anther.backbone.certs import make_certs, read_token, read_tokens, write_tokens
from anther.backbone.endpoint import BackboneEndpoint, endpoint_for
from anther.backbone.in_process import InProcessBackbone
from anther.backbone.service.auth import ServerTls
from anther.backbone.service.server import start
from anther.backbone.service.servicer import BackboneService
from anther.backbone.supervisor import RUN_CLIENT, backbone_for_run
from anther.cli import main as cli
from anther.client.runtime import runtime_for
from anther.core.config import ConfigError
from anther.simulations.experiment import load_config


def _cfg(model: Path, *overrides: str) -> DictConfig:
    return load_config("default", [f"model.path={model}", *overrides])


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("creds")
    make_certs(out, clients=["site-0"])
    write_tokens(out, ["site-0", "evaluator"])
    return out


@pytest.fixture(scope="module")
def service_port(tiny_model_dir: Path, creds: Path) -> Iterator[int]:
    """The tiny model's backbone served in-process with TLS and the tokens of ``creds``."""
    service = BackboneService(InProcessBackbone.from_pretrained(tiny_model_dir))
    server, port = start(service, "127.0.0.1:0", ServerTls.from_dir(creds), read_tokens(creds / "tokens.json"))
    yield port
    server.stop(None)
    service.close()


@pytest.mark.parametrize(("overrides", "key"), [
    (["backbone.mode=remote"], "backbone.address"),
    (["backbone.mode=remote", "backbone.address=host:1"], "backbone.ca_cert"),
    (["backbone.mode=service", "backbone.address=0.0.0.0:50051"], "backbone.advertise_address"),
    (["backbone.mode=cloud"], "backbone.mode"),
    (["backbone.wire_dtype=int4"], "backbone.wire_dtype"),
    (["backbone.mode=remote", "backbone.address=nohostport", "backbone.insecure=true"], "backbone.address"),
    (["backbone.client_cert=/x.pem"], "backbone.client_key"),
    (["backbone.replicas=2"], "backbone.replicas"),
    (["backbone.mode=service", "backbone.replicas=0"], "backbone.replicas"),
    (["backbone.mode=service", "backbone.replicas=2", "backbone.devices=[cuda:0]"], "backbone.devices"),
    (["backbone.mode=remote", "backbone.address=h:1", "backbone.insecure=true", "backbone.replica_addresses=[h:1,h]"],
     "backbone.replica_addresses"),
])
def test_bad_backbone_config_names_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("default", overrides)


def test_node_config_overrides_the_run_config(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "backbone.mode=remote", "backbone.address=server:50051", "backbone.ca_cert=/run/ca.pem",
               "backbone.token_file=/run/evaluator.token", "backbone.wire_dtype=bfloat16")
    assert endpoint_for(_cfg(tmp_path)) is None  # mode=whole_model: no endpoint at all
    run = endpoint_for(cfg)
    assert (run.address, run.token_file, run.wire_dtype) == ("server:50051", "/run/evaluator.token", "bfloat16")
    site = endpoint_for(cfg, {"backbone-token-file": "/site/site-0.token", "backbone-ca": "/site/ca.pem",
                              "backbone-address": "10.0.0.1:50051", "partition-id": 0})
    assert (site.address, site.ca_cert, site.token_file) == ("10.0.0.1:50051", "/site/ca.pem", "/site/site-0.token")
    with pytest.raises(ValueError, match="backbone-key"):
        endpoint_for(cfg, {"backbone-cert": "/site/site-0.pem"})


def test_a_missing_credential_file_is_named_with_the_node_config_key(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "backbone.mode=remote", "backbone.address=127.0.0.1:1", "backbone.insecure=true")
    with pytest.raises(FileNotFoundError, match="backbone-token-file"):
        endpoint_for(cfg, {"backbone-token-file": str(tmp_path / "nope.token")}).connect()


def test_remote_runtime_trains_exactly_like_the_local_one(tiny_model_dir: Path, creds: Path,
                                                          service_port: int) -> None:
    remote_cfg = _cfg(tiny_model_dir, "backbone.mode=remote", f"backbone.address=127.0.0.1:{service_port}",
                      "backbone.wire_dtype=float32",  # a model.path's default is bfloat16
                      f"backbone.ca_cert={creds / 'ca.pem'}", f"backbone.token_file={creds / 'evaluator.token'}")
    remote = runtime_for(remote_cfg, node_config={"backbone-token-file": str(creds / "site-0.token")})
    local = runtime_for(_cfg(tiny_model_dir))
    torch.manual_seed(0)
    embeds = torch.randn(2, 7, local.backbone.info.hidden_size)
    mask = torch.ones(2, 7, dtype=torch.long)
    labels = torch.full((2, 7), -100).index_fill_(1, torch.tensor([5, 6]), 3)
    loss_r, grad_r = remote.backbone.train_step(embeds, mask, labels)
    loss_l, grad_l = local.backbone.train_step(embeds, mask, labels)
    assert loss_r == pytest.approx(loss_l, rel=1e-5)
    torch.testing.assert_close(grad_r, grad_l, rtol=1e-4, atol=1e-6)
    # the local handle counts its tensors; the remote one the serialized messages around them
    assert local.backbone.bytes_up == 2 * 7 * (local.backbone.info.hidden_size * 4 + 8 + 8)
    assert remote.backbone.bytes_up >= local.backbone.bytes_up and remote.backbone.bytes_down > 0


def test_wrong_token_is_refused_with_a_useful_message(tmp_path: Path, creds: Path, service_port: int) -> None:
    (tmp_path / "bad.token").write_text("not-a-known-token\n")
    cfg = _cfg(tmp_path, "backbone.mode=remote", f"backbone.address=127.0.0.1:{service_port}",
               f"backbone.ca_cert={creds / 'ca.pem'}")
    with pytest.raises(ConnectionError, match=r"refused this node's bearer token \(backbone-token-file="):
        endpoint_for(cfg, {"backbone-token-file": str(tmp_path / "bad.token")}).connect()


def test_service_mode_starts_the_backbone_for_the_run_and_stops_it(tiny_model_dir: Path) -> None:
    cfg = _cfg(tiny_model_dir, "backbone.mode=service", "backbone.startup_timeout_s=120")
    with backbone_for_run(cfg) as served:
        b = served.backbone
        workdir = Path(b.token_file).parent
        assert b.address.startswith("127.0.0.1:") and Path(b.ca_cert).is_file()
        assert stat.S_IMODE(os.stat(b.token_file).st_mode) == 0o600
        assert RUN_CLIENT in read_tokens(workdir / "tokens.json")
        remote = endpoint_for(served).connect()
        assert remote.info.hidden_size > 0 and remote.server.batching
        remote.close()
        pid = json.loads((workdir / "ready.json").read_text())["pid"]
    assert not workdir.exists(), "the run's private credentials outlived the run"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_replicas_are_started_spread_over_and_stopped(tiny_model_dir: Path) -> None:
    """Two replicas of the service for one run: each listens on its own port, clients are spread
    over them by partition id, and both stop with the run."""
    cfg = _cfg(tiny_model_dir, "backbone.mode=service", "backbone.replicas=2", "backbone.startup_timeout_s=120")
    with backbone_for_run(cfg) as served:
        addresses = list(served.backbone.replica_addresses)
        assert len(set(addresses)) == 2 and served.backbone.address == addresses[0]
        picked = [endpoint_for(served, {"partition-id": pid}).address for pid in range(4)]
        assert picked == [addresses[0], addresses[1], addresses[0], addresses[1]]
        assert endpoint_for(served, {"partition-id": 1, "backbone-address": "10.0.0.1:1"}).address == "10.0.0.1:1"
        for pid in (0, 1):
            remote = endpoint_for(served, {"partition-id": pid}).connect()
            assert remote.info.hidden_size > 0
            remote.close()
        workdir = Path(served.backbone.token_file).parent
        pids = [json.loads((workdir / name).read_text())["pid"] for name in ("ready.json", "ready-1.json")]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_cli_certs_writes_private_keys_and_tokens(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "creds"
    assert cli(["certs", "--out", str(out), "--clients", "2"]) == 0
    assert sorted(read_tokens(out / "tokens.json")) == ["client-0", "client-1"]
    assert read_token(out / "client-1.token") == read_tokens(out / "tokens.json")["client-1"]
    for private in ("ca.key", "server.key", "client-0.key", "client-0.token", "tokens.json"):
        assert stat.S_IMODE(os.stat(out / private).st_mode) == 0o600, private
    assert cli(["certs", "--out", str(out), "--clients", "alice"]) == 2
    assert "already holds a CA" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    ([], "--tls-dir DIR"),
    (["--insecure", "--tls-dir", "{creds}"], "exactly one"),
    (["--insecure", "--mtls"], "--mtls needs --tls-dir"),
    (["--tls-dir", "{empty}"], "has no server.pem"),
    (["--insecure", "--tokens", "{empty}/tokens.json"], "--tokens file not found"),
])
def test_cli_backbone_serve_refuses_bad_inputs(args: list[str], message: str, tiny_model_dir: Path, creds: Path,
                                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [a.format(creds=creds, empty=tmp_path) for a in args]
    assert cli(["backbone", "serve", "--model", str(tiny_model_dir), *args]) == 2
    assert message in capsys.readouterr().err
    assert cli(["backbone", "serve", "--model", str(tmp_path), "--insecure"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_a_killed_service_is_restarted_on_its_port_and_a_client_carries_on(tiny_model_dir: Path, capsys) -> None:
    """SIGKILL the run's backbone between two training steps of a client: the supervisor starts it
    again on the same port with the same credentials, and the client's next step goes through."""
    cfg = _cfg(tiny_model_dir, "backbone.mode=service", "backbone.startup_timeout_s=120", "backbone.retry_s=120")
    g = torch.Generator().manual_seed(0)
    with backbone_for_run(cfg) as served:
        workdir = Path(served.backbone.token_file).parent
        remote = endpoint_for(served).connect()
        embeds = torch.randn(2, 7, remote.info.hidden_size, generator=g)
        mask, labels = torch.ones(2, 7, dtype=torch.long), torch.randint(0, remote.info.vocab_size, (2, 7), generator=g)
        before = remote.train_step(embeds, mask, labels)[0]
        first = json.loads((workdir / "ready.json").read_text())
        os.kill(first["pid"], signal.SIGKILL)
        after = remote.train_step(embeds, mask, labels)[0]  # retried until the service is back
        again = json.loads((workdir / "ready.json").read_text())
        remote.close()
    assert after == pytest.approx(before, rel=1e-6)
    assert again["port"] == first["port"] and again["pid"] != first["pid"]
    assert "died (exit code -9); restarting it on the same port" in capsys.readouterr().out


@pytest.fixture(scope="module")
def mutual_tls_port(tiny_model_dir: Path, creds: Path) -> Iterator[int]:
    """The same backbone behind mutual TLS: every client must show a certificate ``creds``' CA signed."""
    service = BackboneService(InProcessBackbone.from_pretrained(tiny_model_dir))
    server, port = start(service, "127.0.0.1:0", ServerTls.from_dir(creds, mutual=True),
                         read_tokens(creds / "tokens.json"))
    yield port
    server.stop(None)
    service.close()


@pytest.mark.parametrize(("target", "settings", "named"), [
    ("tls", {"ca_cert": "other/ca.pem", "token_file": "creds/site-0.token"}, "not signed by the CA this node trusts"),
    ("tls", {"token_file": "creds/site-0.token"}, "it speaks TLS, so give this node its CA (backbone-ca"),
    ("tls", {"ca_cert": "creds/ca.pem", "token_file": "other/site-0.token"}, "refused this node's bearer token"),
    ("mtls", {"ca_cert": "creds/ca.pem", "token_file": "creds/site-0.token"},
     "requires a client certificate (mutual TLS), so give this node its certificate and key (backbone-cert"),
    ("mtls", {"ca_cert": "creds/ca.pem", "token_file": "creds/site-0.token", "client_cert": "other/site-0.pem",
              "client_key": "other/site-0.key"}, "refused this node's client certificate (backbone-cert="),
])
def test_a_wrong_credential_fails_in_seconds_naming_the_setting(creds, service_port, mutual_tls_port, tmp_path,
                                                                 target, settings, named):
    """A node configured with the wrong CA, no CA for a TLS service, a token the service does not
    know, or no (or a foreign) client certificate for a mutual-TLS service: connecting fails within
    seconds, not after ``backbone.retry_s`` of retries, with a message that names what to fix."""
    import time

    other = tmp_path / "other"  # another federation's CA, certificate and token
    make_certs(other, clients=["site-0"])
    write_tokens(other, ["site-0"])
    paths = {key: str({"creds": creds, "other": other}[value.split("/")[0]] / value.split("/")[1])
             for key, value in settings.items()}
    port = service_port if target == "tls" else mutual_tls_port
    endpoint = BackboneEndpoint(f"127.0.0.1:{port}", retry_s=120.0, **paths)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=re.escape(named)):
        endpoint.connect()
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(("overrides", "error", "says"), [
    (["backbone.startup_timeout_s=0.5"], TimeoutError, r"did not listen within backbone\.startup_timeout_s=0\.5"),
    (["model.path={empty}"], RuntimeError, r"exited with code [1-9]\d* before it listened"),
])
def test_a_service_that_cannot_start_fails_the_run_naming_why_and_leaves_nothing(tiny_model_dir, tmp_path,
                                                                                 overrides, error, says):
    """The ServerApp's backbone child that never listens (slower than its start-up timeout, or a
    model folder that holds no checkpoint) is an error naming the setting or the child's exit code
    with its log's last lines, and the child is stopped."""
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    cfg = _cfg(tiny_model_dir, "backbone.mode=service", *(o.format(empty=empty) for o in overrides))
    children_before = set(psutil.Process().children(recursive=True))
    with pytest.raises(error, match=says) as raised, backbone_for_run(cfg):
        pass
    if error is RuntimeError:
        assert str(empty) in str(raised.value), raised.value  # the log's tail names the folder
    left = [p for p in set(psutil.Process().children(recursive=True)) - children_before if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, left
