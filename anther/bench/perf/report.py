"""The perf bench's markdown summary and plots, from its ``perf.json`` alone (so they can be
rebuilt from a checked-in result)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anther.core.plots import pyplot


def _overhead(s: dict[str, Any]) -> list[str]:
    return ["## Overhead", "",
            (f"{s['clients']} clients in split mode under `flwr run`, {s['samples_per_round']} samples per round: "
             f"round times {', '.join(f'{x:.1f}' for x in s['round_s'])} s (the first also starts the client "
             "processes and is not counted)."), "",
            "| loop | samples/s |", "|---|---:|",
            f"| federated round, split mode | {s['federated_samples_per_s']:.1f} |",
            f"| bare training loop | {s['bare']['samples_per_s']:.1f} |",
            f"| **ratio** | **{s['ratio']:.2f}** |", ""]


def _sharing(s: dict[str, Any]) -> list[str]:
    lines = ["## Shared backbone against a model per client", "",
             ("Last round's time; peak resident memory of the whole cell (its own process); the share of "
              "the copies' client time (summed over clients) spent loading their model."), "",
             ("| clients | shared round s | copies round s | speed-up | shared peak MB | copies peak MB "
              "| copies: time loading |"),
             "|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["mode"], r["clients"]): r for r in s["rows"]}
    for n in sorted({r["clients"] for r in s["rows"]}):
        sh, cp = by[("shared", n)], by[("copies", n)]
        lines.append(f"| {n} | {sh['round_s'][-1]:.2f} | {cp['round_s'][-1]:.2f} | {s['speedup'][str(n)]:.2f}x "
                     f"| {sh['peak_rss_mb']:.0f} | {cp['peak_rss_mb']:.0f} | {_load_share(cp)} |")
    return [*lines, ""]


def _load_share(copies: dict[str, Any]) -> str:
    """The share of the copies' client time spent loading the model (older results lack it)."""
    if "client_load_s" not in copies:
        return "-"
    return f"{100 * copies['client_load_s'] / copies['client_s']:.1f}%"


def _cache(s: dict[str, Any]) -> list[str]:
    off, on = s["off"], s["on"]
    rounds = range(1, len(off["round_s"]) + 1)
    return ["## Feature cache", "",
            f"{off['clients']} clients, shared backbone; the cache starts empty.", "",
            "| round | without cache s | with cache s |", "|---:|---:|---:|",
            *(f"| {r} | {a:.2f} | {b:.2f} |" for r, a, b in zip(rounds, off["round_s"], on["round_s"])), ""]


def _batching(s: dict[str, Any]) -> list[str]:
    on, off = s["on"], s["off"]
    return ["## Batching", "",
            f"{on['clients']} clients sending train steps to one backbone service for {on['seconds']:.0f} s.", "",
            "| backbone | samples/s | requests per pass |", "|---|---:|---:|",
            f"| batched | {on['samples_per_s']:.1f} | {on['mean_requests_per_pass']:.2f} |",
            f"| one pass per request | {off['samples_per_s']:.1f} | {off['mean_requests_per_pass']:.2f} |",
            f"| **gain** | **{s['gain']:.2f}x** | |", ""]


def _scale(s: dict[str, Any]) -> list[str]:
    return ["## Scale", "",
            (f"{s['clients']} clients, {len(s['round_s'])} rounds, shared backbone: round times "
             f"{', '.join(f'{x:.1f}' for x in s['round_s'])} s; memory {s['rss_start_mb']:.0f} MB at the start, "
             f"{s['peak_rss_mb']:.0f} MB at the peak (perf_scale_memory.png)."), ""]


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f}"


def _modes(s: dict[str, Any]) -> list[str]:
    lines = ["## Split mode against whole-model mode", "",
             ("Real federated runs of the same experiment (split mode with the backbone as a service). Bytes "
              "are per client per round; the round time is the median over rounds 2 onwards; a client "
              "holds its modules' weights plus AdamW's two moments per trainable weight (activations "
              "not counted)."), "",
             ("| configuration | final accuracy | adapters down / up KB | activations up / down MB | round s "
              "| client holds MB (trainable) |"),
             "|---|---:|---:|---:|---:|---:|"]
    for r in s["rows"]:
        b, h = r["per_client_bytes"], r["client_holds"]
        lines.append(f"| {r['mode']} | {r['final_acc']:.3f} | {b['adapter_bytes_down'] / 1024:.1f} / "
                     f"{b['adapter_bytes_up'] / 1024:.1f} | {_mb(b['activation_bytes_up'])} / "
                     f"{_mb(b['activation_bytes_down'])} | {r['median_round_s']:.2f} | "
                     f"{_mb(h['total_bytes'])} ({_mb(h['trainable_bytes'])}) |")
    notes = [f"Feature cache in {m} mode: rounds {x:.2f}x as fast." for m, x in s["cache_speedup"].items()]
    if s["whole_model_over_split_holds"] is not None:
        notes.append(
            f"A whole-model client holds {s['whole_model_over_split_holds']:.1f}x the bytes of a split-mode one."
        )
    return [*lines, "", " ".join(notes), ""]


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def trainstep_lines(s: dict[str, Any]) -> list[str]:
    lines = ["## Backbone TrainStep", ""]
    if "skipped" in s:
        return [*lines, f"Skipped: {s['skipped']}.", ""]
    peak = f"{s['peak_tflops']:.1f} TFLOPS peak" if s["peak_tflops"] else "no known peak, so no MFU"
    lines += [(f"{s['model']}'s LLM ({s['params'] / 1e6:,.1f}M parameters, random {s['dtype']} weights) on "
               f"{s['device_name']} ({peak}); {s['seq_len']} tokens per sequence, "
               f"{s['flops_per_sequence'] / 1e9:,.2f} GFLOP per sequence and step (counted)."), "",
              "In process, one batch per step:", "",
              "| batch | step ms | tokens/s | TFLOPS | MFU | peak memory GB |", "|---:|---:|---:|---:|---:|---:|"]
    for r in s["in_process"]:
        if r.get("out_of_memory"):
            lines.append(f"| {r['batch']} | out of memory | | | | |")
            continue
        memory = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.1f}"
        lines.append(f"| {r['batch']} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['tflops']:.2f} "
                     f"| {_percent(r['mfu'])} | {memory} |")
    if isinstance(s["service"], str):
        return [*lines, "", f"Through one batching backbone service: {s['service']}.", ""]
    lines += ["", "Through one batching backbone service on 127.0.0.1:", "",
              "| clients | sequences per request | requests per pass | tokens/s | TFLOPS | MFU |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in s["service"]:
        lines.append(f"| {r['clients']} | {r['client_batch']} | {r['mean_requests_per_pass']:.2f} "
                     f"| {r['tokens_per_s']:.0f} | {r['tflops']:.2f} | {_percent(r['mfu'])} |")
    return [*lines, ""]


SECTION_TEXT = {
    "trainstep": trainstep_lines,
    "modes": _modes,
    "overhead": _overhead,
    "sharing": _sharing,
    "cache": _cache,
    "batching": _batching,
    "scale": _scale,
}


def markdown(result: dict[str, Any], command: str) -> str:
    env = result["environment"]
    lines = ["# anther bench perf", "", f"`{command}`", "",
              (f"Machine: {env['cpu']}, {env['cpus']} cores, {env['memory_gb']} GB, torch {env['torch']} "
              f"({env['torch_threads']} threads), GPU: {env['cuda'] or 'none'}; {env['date']}."), ""]
    for name, section in result["sections"].items():
        lines += SECTION_TEXT[name](section)
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    plt = pyplot()
    written = []
    sections = result["sections"]
    if "sharing" in sections:
        rows = sections["sharing"]["rows"]
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
        for mode, label in (("shared", "shared backbone"), ("copies", "model per client")):
            mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["clients"])
            xs = [r["clients"] for r in mine]
            ax_t.plot(xs, [r["round_s"][-1] for r in mine], marker="o", label=label)
            ax_m.plot(xs, [r["peak_rss_mb"] for r in mine], marker="o", label=label)
        ax_t.set(xlabel="clients", ylabel="round time (s)", title="round time")
        ax_m.set(xlabel="clients", ylabel="peak memory (MB)", title="peak memory")
        ax_t.legend()
        fig.tight_layout()
        written.append(out / "perf_sharing.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if "scale" in sections:
        trace = sections["scale"]["memory_mb"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([t for t, _ in trace], [m for _, m in trace])
        ax.set(xlabel="seconds", ylabel="resident memory (MB)",
               title=f"{sections['scale']['clients']} clients, {len(sections['scale']['round_s'])} rounds")
        fig.tight_layout()
        written.append(out / "perf_scale_memory.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
