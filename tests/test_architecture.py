"""The layering the code promises (docs/design.md) holds, and the check that enforces it can fail.

The contracts are import-linter's, in pyproject.toml: imports run one way from anther.core up
to anther.cli, nothing imports the two composition roots (the ClientApp and ServerApp modules),
the backbone's interface and wire format sit below its service, and no import cycle exists
anywhere. ruff runs here too, so the suite fails on what the linter would.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anther.core import protocol

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _lint_imports(root: Path, contract: str | None = None) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` with ``root``'s pyproject.toml: every
    contract, or only the one with id ``contract``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    only = ["--contract", contract] if contract else []
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache", *only], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The package and its pyproject.toml in a folder of their own, to break on purpose."""
    shutil.copytree(REPO / "anther", tmp_path / "anther", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_import_contracts_hold():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_client_module_but_the_api_is_closed_to_strategies():
    """A new module in anther/client is off limits to the strategies until the contract says
    otherwise: the contract lists every one of them except ``api``."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (closed,) = [c["forbidden_modules"] for c in contracts if c["id"] == "client-api"]
    modules = {f"anther.client.{p.stem}" for p in (REPO / "anther" / "client").glob("*.py")} - {
        "anther.client.__init__", "anther.client.api"}
    assert set(closed) == modules


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("core/config.py", "import anther.cli", "layers"),  # the core reaching up to the top
    ("client/trainer.py", "from anther.server import checkpoint", "layers"),  # a layer reaching up
    ("strategies/fedavg_like.py", "from anther.client_app import app", "roots"),
    ("backbone/interface.py", "from anther.backbone import remote", "backbone"),
    ("strategies/scaffold.py", "from anther.client.trainer import split_step", "client-api"),
])
def test_a_back_import_breaks_the_check(copy: Path, module: str, line: str, contract: str):
    assert _lint_imports(copy, contract).returncode == 0  # the copy keeps it, until:
    path = copy / "anther" / module
    path.write_text((path.read_text() if path.exists() else "") + f"\n{line}  # against the layering\n")
    assert _lint_imports(copy).returncode != 0
    result = _lint_imports(copy, contract)
    assert result.returncode != 0 and "1 broken" in result.stdout, result.stdout


def test_an_import_cycle_breaks_the_check(copy: Path):
    """Two modules of one layer importing each other: allowed by the layers, refused as a cycle."""
    (copy / "anther" / "data" / "first.py").write_text("from anther.data import second  # noqa: F401\n")
    (copy / "anther" / "data" / "second.py").write_text("from anther.data import first  # noqa: F401\n")
    assert _lint_imports(copy, "layers").returncode == 0
    result = _lint_imports(copy, "acyclic")
    assert result.returncode != 0 and "1 broken" in result.stdout, result.stdout


def test_ruff_passes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module's code, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_protocol_keys_are_spelt_out_only_in_the_protocol_module():
    """A key that crosses a Flower message is written once, in anther.core.protocol, and used by
    name. (Plain words such as "config" or "metrics" also name other things; the keys checked
    here are the protocol's own spellings.)"""
    keys = {value for name, value in vars(protocol).items()
            if name.isupper() and isinstance(value, str) and ("-" in value or value in ("dp_epsilon", "train_seconds"))}
    assert "partition-id" in keys and "server-round" in keys
    spelt = [f"{path.relative_to(REPO)}:{line}: {value!r}"
             for path in sorted((REPO / "anther").rglob("*.py"))
             if path.name != "protocol.py" and "proto" not in path.parts
             for line, value in _string_literals(path) if value in keys]
    assert not spelt, "\n".join(spelt)


# libraries a process imports only when it uses them: each costs a process from half a second to
# seconds to start, and Flower starts a process per ClientApp message in a deployment
ON_USE_ONLY = ("matplotlib", "flwr_datasets", "datasets", "opacus", "sklearn", "peft")


def test_the_apps_start_without_the_libraries_they_use_only_on_demand() -> None:
    probe = ("import sys, anther.cli, anther.client_app, anther.server_app; "
             f"print(' '.join(m for m in {ON_USE_ONLY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                          text=True, check=True, timeout=120)
    assert done.stdout.split() == [], f"the ClientApp, ServerApp or CLI imports {done.stdout.strip()} at start"


READY_PROBE = """
import sys
from anther.simulations.assets import prepare_assets
from anther.simulations.experiment import load_config
from anther.simulations.runner import simulate
cfg = prepare_assets(load_config("default", ["data.train_size=40", "data.test_size=8"]))
print(" ".join(m for m in ("torch", "transformers.modeling_utils", "anther.model.families.llava") if m in sys.modules))
"""


def test_the_cli_readies_a_federated_run_without_model_code(tmp_path: Path) -> None:
    """``anther simulate`` checks the config, puts the model and data in place and starts ``flwr run``;
    the ServerApp and the ClientApps load the model. transformers' model code costs a process about
    4 s of CPU and PyTorch over 1 s, so the CLI imports neither (nor any model family) for a run
    whose optimiser and schedule are built-ins named by a string."""
    env = {**os.environ, "ANTHER_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", READY_PROBE], env=env, capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [], f"readying a run imported {done.stdout.strip()}"
    assert list((tmp_path / "models").glob("tiny-llava-*/config.json"))  # and it did copy the model


QUERY_PROBE = """
import json, sys
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from anther import client_app
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as Flower sets them
config = ConfigRecord({"experiment": Path(sys.argv[1]).read_text(), "server-round": 0})
message = Message(RecordDict({"config": config}), dst_node_id=7, message_type=MessageType.QUERY)
context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                  node_config={"partition-id": 1, "num-partitions": 2})
info = client_app.query(message, context).content["info"]
print(json.dumps({"holdings": json.loads(info["holdings"]), "imported": [m for m in ("torch", "transformers")
                                                                          if m in sys.modules]}))
"""


def test_a_site_answers_the_query_without_importing_pytorch(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Flower starts a ClientApp process per message in a deployment and every site answers a query
    at the start of every run: that process reads the site's data, not PyTorch or the model code."""
    from anther.core.config import to_yaml
    from anther.core.sample import write_split
    from anther.data import shapes_vqa
    from anther.simulations.experiment import load_config

    write_split(shapes_vqa.generate(40, seed=1, prefix="train"), tmp_path / "data", "train")
    write_split(shapes_vqa.generate(8, seed=2, prefix="test"), tmp_path / "data", "test")
    cfg = load_config("default", [f"model.path={tiny_model_dir}", f"data.path={tmp_path / 'data'}",
                                  "federation.num_clients=2"])
    (tmp_path / "experiment.yaml").write_text(to_yaml(cfg))
    done = subprocess.run([sys.executable, "-c", QUERY_PROBE, str(tmp_path / "experiment.yaml")], cwd=tmp_path,
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    assert answer["imported"] == [], f"a query imported {answer['imported']}"
    assert answer["holdings"]["train"] > 0, answer  # and it did read this node's partition


@pytest.mark.parametrize(("path", "measured"), [
    ("/home/u/anther/anther/cli.py", True),  # a checkout in a folder called anther, as git clone names it
    ("/home/u/work/anther/client_app.py", True),
    ("/tmp/flwr-home/apps/anther.anther.0.1.0.3f2a/anther/server_app.py", True),  # the app bundle Flower installed
    ("/home/u/anther/.venv/lib/python3.11/site-packages/torch/nn/modules/module.py", False),
    ("/usr/lib/python3/site-packages/anther/cli.py", False),
    ("/home/u/anther/tests/test_dp.py", False),
    ("/home/u/anther/scripts/suite_bench.py", False),
    ("/home/u/anther/anther/backbone/proto/backbone_pb2.py", False),
])
def test_coverage_measures_anthers_code_wherever_the_checkout_is(path: str, measured: bool) -> None:
    """The coverage config's include and omit patterns, matched as coverage.py matches them."""
    import tomllib

    from coverage.files import GlobMatcher

    run = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["coverage"]["run"]
    included, omitted = GlobMatcher(run["include"], "include"), GlobMatcher(run["omit"], "omit")
    assert (included.match(path) and not omitted.match(path)) is measured
