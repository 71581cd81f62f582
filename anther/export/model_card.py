"""The README.md an export carries: what it is, what it was trained on and how well it did."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

METRICS = (("train_loss", "loss"), ("acc_mc", "acc (mc)"), ("acc_gen", "acc (gen)"))


def model_card(cfg: DictConfig, result: dict[str, Any], server_round: int, kind: str, base: dict[str, str],
               merged: bool) -> str:
    """Markdown: base model, data and scenario, strategy, rounds, the metrics table, privacy."""
    rows = [r for r in result.get("rounds", []) if r.get("round", 0) <= server_round]
    table = ["| round | " + " | ".join(h for _, h in METRICS) + " |", "| ---: |" + " ---: |" * len(METRICS)]
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), (int, float)) else "-" for k, _ in METRICS]
        table.append(f"| {r['round']} | " + " | ".join(cells) + " |")
    data = result.get("data") or {}
    usage = {
        "nano_adapters": ("Load with `anther.load(\"<this folder>\")` (`base=` where the base checkpoint is "
                          "elsewhere), or `anther predict <this folder> ...`."),
        "merged": ("A standard Hugging Face checkpoint: `AutoModelForImageTextToText.from_pretrained(\"<this "
                   "folder>\")` with its processor, `AutoProcessor.from_pretrained`. anther is not needed."),
        "peft": "peft's adapter format: `PeftModel.from_pretrained(base_model, \"<this folder>\")`.",
    }["merged" if merged else kind]
    return "\n".join([
        f"# {cfg.name}: {'merged checkpoint' if merged else kind.replace('_', ' ')} from a federated run",
        "",
        f"Base model: `{base['path']}` (fingerprint `{base['fingerprint']}`, family `{base['family']}`).",
        (f"Trained with anther: {cfg.federation.num_clients} clients, {server_round} rounds, strategy "
         f"`{cfg.strategy.get('name', cfg.strategy.get('_target_'))}`, mode `{cfg.mode}`."),
        (f"Data: `{cfg.data.format}` at `{cfg.data.path}` ({data.get('layout', 'layout not recorded')}); scenario "
         f"`{cfg.scenario.name}`."),
        "",
        *_privacy(cfg, rows),
        "",
        "## Metrics on the server's test set",
        "",
        *table,
        "",
        "## Use",
        "",
        usage,
        "",
    ])


def _privacy(cfg: DictConfig, rows: list[dict[str, Any]]) -> list[str]:
    p = cfg.privacy
    lines = []
    if p.dp:
        spent = max((r.get("dp_epsilon_max") or 0.0 for r in rows), default=0.0)
        lines.append(f"Privacy: sample-level DP-SGD, epsilon spent {spent:.2f} (the most any client spent).")
    if p.client_level.mode != "off":
        spent = max((r.get("dp_client_epsilon") or 0.0 for r in rows), default=0.0)
        lines.append(f"Privacy: client-level DP ({p.client_level.mode}), epsilon spent {spent:.2f}.")
    if p.secagg.enabled:
        lines.append("Secure aggregation (SecAgg+): the server saw only the sum of the updates.")
    return lines or ["Privacy: no differential privacy."]
