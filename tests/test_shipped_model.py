"""The tiny LLaVA that ships with anther: intact, made by today's recipe with the default
settings, copied (never pretrained) by a default run, and the recipe that made it still learns."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from anther.cli import main
from anther.model import shipped_model, tiny_model
from anther.model.shipped_model import CHECKSUMS, PRETRAIN_STEPS, PROVENANCE_FILE, RECIPE_VERSION, SHIPPED
from anther.model.skill_probe import score
from anther.model.tiny_model import Recipe
from anther.simulations.assets import ensure_tiny, prepare_assets
from anther.simulations.experiment import load_config

MAX_SIZE_MB = 25
MAX_PRETRAIN_LOSS = 0.5  # the shipped model's final language loss, of the one its model card gives


def _listed() -> dict[str, str]:
    """The shipped checkpoint's files and their recorded sha256."""
    return {name: digest for digest, name in
            (line.split(maxsplit=1) for line in (SHIPPED / CHECKSUMS).read_text().splitlines())}


def test_the_shipped_checkpoint_is_intact_and_made_by_the_default_recipe() -> None:
    listed = _listed()
    assert {"config.json", "model.safetensors", "tokenizer.json", PROVENANCE_FILE} <= set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name
    made = json.loads((SHIPPED / PROVENANCE_FILE).read_text())
    assert (made["recipe_version"], made["family"], made["seed"], made["pretrain_steps"]) == (
        RECIPE_VERSION, "llava", 0, PRETRAIN_STEPS)
    assert made["pretrain_final_loss"] < MAX_PRETRAIN_LOSS, made
    assert sum((SHIPPED / name).stat().st_size for name in listed) < MAX_SIZE_MB * 2**20
    card = (SHIPPED / "README.md").read_text()  # the model card: how it was made, and how to remake it
    assert "anther model pretrain" in card and f"{PRETRAIN_STEPS}" in card and "| yesno |" in card


def test_a_default_run_copies_the_shipped_model_and_pretrains_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANTHER_HOME", str(tmp_path))
    monkeypatch.setattr(tiny_model, "init_tiny", lambda *a, **k: pytest.fail("the default run made its model"))
    cfg = prepare_assets(load_config("default", ["data.train_size=40", "data.test_size=8"]))  # the default model
    model = Path(cfg.model.path)
    assert model.parent == tmp_path / "models" and model.name.endswith(f"-shipped-{shipped_model.shipped_id()}")
    assert {f.name for f in model.iterdir()} == set(_listed())
    assert all((model / name).read_bytes() == (SHIPPED / name).read_bytes() for name in _listed())


def test_a_model_pretrained_here_before_the_shipped_one_is_not_taken_for_it(tmp_path: Path, monkeypatch) -> None:
    """A cache from before the model shipped has a folder named by the same settings, with this
    machine's own weights: the run must still start from the shipped ones."""
    monkeypatch.setenv("ANTHER_HOME", str(tmp_path))
    old = tmp_path / "models" / f"tiny-llava-r{RECIPE_VERSION}-seed0-pretrain{PRETRAIN_STEPS}"
    shutil.copytree(SHIPPED, old)
    (old / "model.safetensors").write_bytes(b"weights pretrained on another machine")
    cfg = prepare_assets(load_config("default", ["data.train_size=40", "data.test_size=8"]))
    assert Path(cfg.model.path) != old
    assert (Path(cfg.model.path) / "model.safetensors").read_bytes() == (SHIPPED / "model.safetensors").read_bytes()


def test_a_damaged_shipped_file_is_refused_naming_it(tmp_path: Path, monkeypatch) -> None:
    damaged = tmp_path / "shipped"
    shutil.copytree(SHIPPED, damaged)
    weights = bytearray((damaged / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (damaged / "model.safetensors").write_bytes(bytes(weights))
    monkeypatch.setattr(shipped_model, "SHIPPED", damaged)
    with pytest.raises(ValueError, match=r"model\.safetensors does not match its checksum"):
        ensure_tiny(tmp_path / "models" / "tiny", seed=0, pretrain_steps=PRETRAIN_STEPS)
    assert not (tmp_path / "models" / "tiny").exists()  # nothing half-copied is left to load


def test_other_settings_are_made_by_the_recipe(tmp_path: Path) -> None:
    """What ``anther model init-tiny`` does for any other setting (untrained here: the test below
    pretrains), with its own provenance and checksums."""
    assert not shipped_model.shipped_for("llava", 0, 0) and not shipped_model.shipped_for("llava", 1, PRETRAIN_STEPS)
    out = ensure_tiny(tmp_path / "tiny", seed=0, pretrain_steps=0)
    made = json.loads((out / PROVENANCE_FILE).read_text())
    assert (made["pretrain_steps"], made["pretrain_final_loss"]) == (0, None) and "recipe" not in made
    assert shipped_model.checksums(out) == (out / CHECKSUMS).read_text()


# A short pretraining: 100 vision steps of 32 pictures, 120 language steps of 16 examples (about 25 s
# of CPU). Measured: the probe's score went from 0.32 (untrained) to 0.43 (seed 0; seed 1: 0.36).
SHORT = ["vision_steps=100", "vision_batch_size=32", "steps=120", "batch_size=16", "probe_per_task=12"]
MIN_PROBE_GAIN = 0.06


def test_a_short_pretraining_improves_its_probe_and_writes_its_card(tmp_path: Path, capsys) -> None:
    """``anther model pretrain`` writes the checkpoint with its model card (both probes, how it was
    made, checksummed); the pretrained model answers its own pretraining questions better than
    the untrained one."""
    out = tmp_path / "tiny"
    assert main(["model", "pretrain", "--out", str(out), *SHORT]) == 0
    made = json.loads((out / PROVENANCE_FILE).read_text())
    assert made["created_by"] == "anther model pretrain " + " ".join(SHORT)
    assert made["recipe"] == {**asdict(Recipe()), "vision_steps": 100, "vision_batch_size": 32, "batch_size": 16}
    assert score(made["probe"]) >= score(made["untrained_probe"]) + MIN_PROBE_GAIN, made
    card = (out / "README.md").read_text()
    assert made["created_by"] in card and "| pretraining domains | yesno |" in card
    assert shipped_model.checksums(out) == (out / CHECKSUMS).read_text()  # the card is checksummed too
    assert "| untrained | seed 0 (kept) |" in capsys.readouterr().out


def test_the_seed_search_keeps_the_seed_the_probe_scores_best(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    assert main(["model", "pretrain", "--out", str(out), "seeds=[3,0,1]", "vision_steps=20", "steps=20",
                 "batch_size=8", "probe_per_task=4"]) == 0
    made = json.loads((out / PROVENANCE_FILE).read_text())
    assert set(made["seed_search"]) == {"3", "0", "1"}
    assert made["seed_search"][str(made["seed"])] == max(made["seed_search"].values())
    assert score(made["probe"]) == pytest.approx(made["seed_search"][str(made["seed"])], abs=1e-4)
    assert not list(tmp_path.glob("anther-pretrain-*"))  # the other seeds' checkpoints are gone


def test_a_bad_pretrain_setting_is_refused_before_anything_runs(tmp_path: Path, capsys) -> None:
    assert main(["model", "pretrain", "--out", str(tmp_path / "x"), "steps=0"]) == 2
    assert main(["model", "pretrain", "--out", str(tmp_path / "x"), "seeds=[1,1]"]) == 2
    assert main(["model", "pretrain", "--out", str(tmp_path / "x"), "vision_lr=0"]) == 2
    assert main(["model", "pretrain", "--out", str(tmp_path / "x"), "vision_steps=10"]) == 2
    errors = capsys.readouterr().err
    assert "steps=0 is invalid" in errors and "seeds=[1, 1] is invalid" in errors
    assert "vision_steps=10 must be >= 20" in errors
    assert "vision_lr=0.0 must be > 0" in errors
    assert not (tmp_path / "x").exists()


def test_the_probe_command_scores_any_tiny_llava(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    """``anther model probe``: a table of accuracy per kind in both domain sets, and the same in JSON."""
    out = tmp_path / "probe.json"
    assert main(["model", "probe", "--model", str(tiny_model_dir), "--per-task", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"pretraining_domains", "unseen_domains"} and result["per_task"] == 2
    assert all(0 <= v <= 1 for kinds in (result["pretraining_domains"], result["unseen_domains"])
               for v in kinds.values())
    assert "| unseen domains | yesno |" in capsys.readouterr().out
