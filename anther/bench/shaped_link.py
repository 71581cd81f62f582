"""A site's round time against its link's bandwidth: split mode at each wire dtype, and local mode.

The backbone service runs in one network namespace, a site in another, joined by a veth pair
that ``tc`` limits to each bandwidth in turn, both ways (:mod:`anther.bench.netns`). At each
bandwidth the site runs the default experiment's local training for ``--steps`` steps through
the service over TLS (its own samples, its NanoAdapters, the real TrainStep), once per wire
dtype; and, for local mode (``mode=whole_model``: the whole MLLM and its LoRA on the site), the
same steps with no backbone traffic at all. Each also sends and receives its adapters over the
link, as a round's exchange with the server would. A round's time is ``local_steps`` times the
measured step plus that exchange; ``round_time.py``'s model is fitted and checked against these.

    sudo python -m anther.bench.shaped_link [--rates 10 100 1000] [--wire-dtypes float32 int8]
        [--steps 5] [--out DIR]

Writes ``shaped_link.json``, ``shaped_link.md`` and ``shaped_link.png`` to ``--out`` (default
``$ANTHER_HOME/bench/shaped_link``). Needs root and Linux: where namespaces cannot be made it says
why, writes that to the JSON and exits 0. Traffic goes only between the two namespaces.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from anther.backbone.supervisor import wait_ready
from anther.bench.netns import LinkPair, why_not
from anther.bench.results import results_dir
from anther.bench.round_time import LinkMeasurement, check_model
from anther.core.config import WIRE_DTYPES
from anther.core.plots import pyplot

SINK_PORT, SERVICE_PORT = 7001, 7002
LOCAL = "local mode"


# ---------------------------------------------------------------- the site's side


def _transfer(address: str, up: int, down: int) -> float:
    """Seconds to receive ``down`` bytes from the sink and send it ``up`` bytes back (a round's
    adapter exchange), over a fresh connection."""
    began = time.perf_counter()
    with socket.create_connection((address, SINK_PORT), timeout=120) as s:
        s.sendall(f"{down}\n".encode())
        left = down
        while left:
            chunk = s.recv(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("the sink closed the connection early")
            left -= len(chunk)
        s.sendall(b"\0" * up)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the sink's word that it has all of it
    return time.perf_counter() - began


def site(args: argparse.Namespace) -> None:
    """Run in the site's namespace: warm up, time ``--steps`` local steps, time the adapter exchange."""
    import torch

    from anther.client.runtime import runtime_for
    from anther.client.training_round import train_round
    from anther.data.client_data import client_data
    from anther.simulations.experiment import load_config

    torch.set_num_threads(1)  # as a simulated ClientApp computes
    cfg = load_config("default", args.overrides)
    runtime = runtime_for(cfg)
    samples, _ = client_data(cfg, Path(cfg.data.path), 0, cfg.federation.num_clients)
    train_round(cfg, runtime, samples, seed=1, steps=1)  # the connection, the kernels
    up0, down0 = runtime.backbone.bytes_up, runtime.backbone.bytes_down
    began = time.perf_counter()
    train_round(cfg, runtime, samples, seed=2, steps=args.steps)
    step_s = (time.perf_counter() - began) / args.steps
    adapters = sum(t.numel() * t.element_size() for t in runtime.edge.adapter_state().values())
    print(json.dumps({"step_s": step_s, "bytes_up_per_step": (runtime.backbone.bytes_up - up0) / args.steps,
                      "bytes_down_per_step": (runtime.backbone.bytes_down - down0) / args.steps,
                      "adapter_bytes": adapters, "exchange_s": _transfer(args.server_ip, adapters, adapters)}))


def sink(args: argparse.Namespace) -> None:
    """Run in the server's namespace: for each connection, send the bytes asked for, take what comes back."""
    with socket.create_server((args.server_ip, SINK_PORT)) as server:
        while True:
            conn, _ = server.accept()
            with conn:
                wanted = int(conn.makefile("rb").readline())
                conn.sendall(b"\0" * wanted)
                while conn.recv(1 << 20):
                    pass
                conn.sendall(b"k")


# ---------------------------------------------------------------- the bench


def _start(link: LinkPair, ns: str, argv: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([*link.prefix(ns), *argv], stdout=out, stderr=subprocess.STDOUT)


def _site_run(link: LinkPair, overrides: list[str], steps: int, log: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "anther.bench.shaped_link", "site", "--server-ip", link.server_ip,
            "--steps", str(steps), "--", *overrides]
    done = subprocess.run([*link.prefix(link.site), *argv], capture_output=True, text=True, timeout=1800, check=False)
    with log.open("a") as out:
        out.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"the site's run failed (exit code {done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(rates: list[float], dtypes: list[str], steps: int, out: Path, experiment: list[str]) -> list[dict]:
    """Every (bandwidth, setting) measured over one pair of namespaces."""
    from anther.simulations.assets import prepare_assets
    from anther.simulations.experiment import load_config

    cfg = prepare_assets(load_config("default", experiment))  # the tiny model and data, made here, once
    paths = [f"model.path={cfg.model.path}", f"data.path={cfg.data.path}", *experiment]
    log = out / "shaped_link.log"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, LinkPair() as link:
        certs = Path(tmp) / "certs"
        subprocess.run([sys.executable, "-m", "anther.cli", "certs", "--out", str(certs), "--clients", "1",
                        "--server-name", link.server_ip], check=True, capture_output=True)
        ready = Path(tmp) / "ready"
        service = _start(link, link.server, [sys.executable, "-m", "anther.cli", "backbone", "serve", "--model",
                                             str(cfg.model.path), "--host", link.server_ip, "--port", str(SERVICE_PORT),
                                             "--tls-dir", str(certs), "--ready-file", str(ready)], log)
        sinker = _start(link, link.server, [sys.executable, "-m", "anther.bench.shaped_link", "sink", "--server-ip",
                                            link.server_ip], log)
        try:
            wait_ready(service, ready, log, timeout_s=180.0)
            remote = [*paths, "backbone.mode=remote", f"backbone.address={link.server_ip}:{SERVICE_PORT}",
                      f"backbone.ca_cert={certs / 'ca.pem'}", f"backbone.token_file={certs / 'client-0.token'}"]
            for rate in rates:
                link.shape(rate)
                for dtype in dtypes:
                    row = _site_run(link, [*remote, f"backbone.wire_dtype={dtype}"], steps, log)
                    rows.append({"mbit": rate, "setting": dtype, **row})
                    print(f"{rate:>6g} Mbit/s  {dtype:<14} step {row['step_s']:.3f} s", flush=True)
                row = _site_run(link, [*paths, "mode=whole_model"], steps, log)
                rows.append({"mbit": rate, "setting": LOCAL, **row})
                print(f"{rate:>6g} Mbit/s  {LOCAL:<14} step {row['step_s']:.3f} s", flush=True)
        finally:
            for proc in (service, sinker):
                proc.terminate()
                proc.wait(timeout=30)
    local_steps = int(cfg.train.local_steps)
    for row in rows:
        row["local_steps"] = local_steps
        row["round_s"] = local_steps * row["step_s"] + row["exchange_s"]
    return rows


def markdown(rows: list[dict], checked: dict[str, Any]) -> str:
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    rates = sorted({r["mbit"] for r in rows})
    by = {(r["setting"], r["mbit"]): r for r in rows}
    head = " | ".join(f"round s at {m:g} Mbit/s" for m in rates)
    lines = [f"| setting | bytes up / step | bytes down / step | {head} |", "|---|---:|---:|" + "---:|" * len(rates)]
    for s in settings:
        first = by[(s, rates[0])]
        lines.append(f"| {s} | {first['bytes_up_per_step']:,.0f} | {first['bytes_down_per_step']:,.0f} | "
                     + " | ".join(f"{by[(s, m)]['round_s']:.1f}" for m in rates) + " |")
    lines += ["", (f"Round-time model (round_time.py), fitted at {checked['fitted_at_mbit']:g} Mbit/s: predicted "
                   "against measured round time at the other bandwidths, largest error "
                   f"{checked['max_relative_error'] * 100:.1f}%.")]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = sorted((r for r in rows if r["setting"] == setting), key=lambda r: r["mbit"])
        ax.plot([r["mbit"] for r in mine], [r["round_s"] for r in mine], marker="o", label=setting)
    ax.set(xscale="log", yscale="log", xlabel="link bandwidth each way (Mbit/s)", ylabel="round time of one site (s)",
           title="A site's round against its link")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    reason = why_not()
    if reason is not None:
        print(f"shaped-link bench skipped: {reason}")
        (out / "shaped_link.json").write_text(json.dumps({"skipped": reason}, indent=2))
        return 0
    rows = measure(args.rates, args.wire_dtypes, args.steps, out, args.overrides)
    checked = check_model([LinkMeasurement.from_row(r) for r in rows])
    (out / "shaped_link.json").write_text(json.dumps({"rows": rows, "model_check": checked,
                                                      "command": " ".join(sys.argv)}, indent=2))
    (out / "shaped_link.md").write_text(markdown(rows, checked))
    plot(rows, out / "shaped_link.png")
    print(markdown(rows, checked))
    print(f"wrote {out / 'shaped_link.json'}, shaped_link.md and shaped_link.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role")
    for role in ("site", "sink"):
        part = sub.add_parser(role, help=argparse.SUPPRESS)
        part.add_argument("--server-ip", required=True)
        part.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rates", nargs="+", type=float, default=[10.0, 100.0, 1000.0], help="Mbit/s each way")
    parser.add_argument("--wire-dtypes", nargs="+", default=list(WIRE_DTYPES), choices=WIRE_DTYPES)
    parser.add_argument("--steps", type=int, default=5, help="local steps measured per setting")
    parser.add_argument("--out", default=str(results_dir("shaped_link")))
    args = parser.parse_args(argv)
    args.overrides = overrides
    if args.role == "site":
        site(args)
        return 0
    if args.role == "sink":
        sink(args)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
