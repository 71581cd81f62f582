"""The ``anther`` command line.

    anther simulate [-e EXPERIMENT] [HYDRA_OVERRIDE ...]   federated simulation (flwr run underneath),
                                                           or a baseline (baseline=local_only, ...)
    anther bench heterogeneity [--out DIR] [OVERRIDE ...]  methods x scenarios x seeds, resumable, report
    anther bench perf [--out DIR] [KEY=VALUE ...]          speed and memory: overhead, sharing, cache, scale
    anther bench real-shape [--models ...] [--out DIR]     one round at LLaVA-1.5-7B's and Qwen2-VL-7B's shapes
    anther model init-tiny --out DIR                       make a tiny checkpoint (any family) by the recipe
    anther model pretrain --out DIR [KEY=VALUE ...]        make the tiny LLaVA: seed search, skill probe, card
    anther model probe [--model DIR]                       what a tiny LLaVA answers before any tuning
    anther model report [--json FILE]                      parameters and bytes per side of real MLLMs
    anther data generate --out DIR                         write ShapesVQA in the on-disk format
    anther data report [-e EXPERIMENT] [OVERRIDE ...]      what each client holds under a scenario
    anther app --out DIR                                   the Flower app flwr run submits, on its own
    anther certs --out DIR --clients 3                     CA, server and client certificates + tokens
    anther backbone serve --model DIR --tls-dir DIR        run the backbone service standalone

See docs/deployment.md for how the pieces of a real deployment fit together.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from anther.core.config import FLOAT_DTYPES, QUANTIZATIONS, WIRE_DTYPES, BackboneConfig, ConfigError, ModelConfig
from anther.core.errors import RunFailed, Stopped

if TYPE_CHECKING:
    from omegaconf import DictConfig


def _simulate(args: argparse.Namespace) -> int:
    from anther.simulations.runner import resume, simulate

    if args.resume is None:
        return simulate(args.experiment, args.overrides, verbose=args.verbose, config_dir=args.config_dir)
    if args.overrides or args.experiment != "default" or args.config_dir:
        raise ValueError(f"--resume {args.resume} continues that run with its own config.yaml; "
                         "give no experiment or overrides with it")
    return resume(Path(args.resume), verbose=args.verbose)


class _LazyNames:
    """Names argparse checks or prints, read from ``module.attribute`` only then: the registries
    (model families, the size report's models) load transformers' model classes, which every
    other command, and ``anther --help``, can do without."""

    def __init__(self, module: str, attribute: str, sort: bool = False) -> None:
        self.module, self.attribute, self.sort = module, attribute, sort

    def _names(self) -> list[str]:
        names = list(getattr(importlib.import_module(self.module), self.attribute))
        return sorted(names) if self.sort else names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()


FAMILY_NAMES = _LazyNames("anther.model.families", "FAMILIES", sort=True)
REPORT_MODELS = _LazyNames("anther.bench.model_sizes", "REAL_CONFIGS")


def _init_tiny(args: argparse.Namespace) -> int:
    from anther.model.tiny_model import init_tiny

    out = init_tiny(Path(args.out), seed=args.seed, pretrain_steps=args.pretrain_steps, family=args.family)
    print(f"tiny {args.family} checkpoint written to {out}")
    return 0


def _app(args: argparse.Namespace) -> int:
    from anther.simulations.launcher import write_app

    print(write_app(Path(args.out)))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from anther.model.skill_probe import markdown
    from anther.model.tiny_pretraining import load_pretrain, pretrain_tiny

    cfg = load_pretrain(args.config, args.overrides)  # refused here, before minutes of pretraining
    command = " ".join(["anther model pretrain", *(["--config", args.config] if args.config != "tiny_llava" else []),
                        *args.overrides])
    made = pretrain_tiny(cfg, Path(args.out), command)
    print(markdown({"untrained": made["untrained_probe"], f"seed {made['seed']} (kept)": made["probe"]}))
    print(f"seed search (probe score): {made['seed_search']}")
    print(f"tiny LLaVA written to {args.out}, its model card in README.md")
    return 0


def _probe(args: argparse.Namespace) -> int:
    import json

    from anther.model.skill_probe import markdown, probe

    model_dir = args.model
    if model_dir is None:
        from anther.simulations.assets import prepare_assets
        from anther.simulations.experiment import load_config

        model_dir = Path(prepare_assets(load_config("default", [])).model.path)
    result = probe(Path(model_dir), args.per_task, args.seed)
    print(markdown({str(model_dir): result}))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model_dir), "per_task": args.per_task,
                                               "seed": args.seed, **result}, indent=2))
    return 0


def _model_report(args: argparse.Namespace) -> int:
    import json

    from anther.bench.model_sizes import as_dicts, markdown, size_report

    args.models = args.models or list(REPORT_MODELS)
    reports = [size_report(name, args.adapter_rank, args.lora_rank, args.text_tokens, args.dtype, args.wire_dtype)
               for name in args.models]
    print(markdown(reports), end="")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "func"},
                                               "models": as_dicts(reports)}, indent=2))
        print(f"written to {args.json}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from anther.export.merge import export_merged
    from anther.export.nano_export import export_adapters
    from anther.export.peft_export import export_peft
    from anther.export.run_artifacts import RunArtifacts
    from anther.export.site_export import export_site

    run = RunArtifacts.read(Path(args.run_dir))
    if args.site_state:
        out = export_site(run, Path(args.site_state), Path(args.out), args.round)
    elif run.cfg.mode == "whole_model":
        out = export_peft(run, Path(args.out), args.round, merge=args.merge)
    else:
        out = (export_merged if args.merge else export_adapters)(run, Path(args.out), args.round)
    print(f"exported to {out} ({'merged checkpoint' if args.merge else 'adapters'}; see its README.md)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import json

    from anther.export.predictor import load

    predictor = load(args.model, base=args.base, overrides=args.overrides, server_round=args.round)
    if args.data:
        from anther.export.predict_data import predict_folder

        limit = args.limit if args.limit is not None else predictor.cfg.eval.server_test_size
        out = Path(args.out or "predictions")
        metrics = predict_folder(predictor, Path(args.data), out, args.format or "anther", args.split, limit)
        print(json.dumps(metrics, indent=2))
        print(f"predictions.jsonl and metrics.json written to {out}")
        return 0
    if not (args.image or args.question):
        raise ValueError("give --data DIR, or --question TEXT (with --image FILE unless it is about text alone)")
    if not args.question:
        raise ValueError("--image needs a --question about it")
    if args.options:
        (scores,) = predictor.score([args.image], [args.question], [args.options])
        for option, score in sorted(scores.items(), key=lambda kv: -kv[1]):
            print(f"{option}: {score:.3f}")
    else:
        print(predictor.generate([args.image], [args.question], max_new_tokens=args.max_new_tokens)[0])
    return 0


def _add_export_parsers(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("export", help="write a run's adapters to use elsewhere (docs/export.md)",
                         description="Split runs: the NanoAdapters with their config and a model card, or "
                         "--merge into a checkpoint plain transformers loads (where the merge is exact). "
                         "Whole-model runs: peft's format, or --merge through peft.")
    exp.add_argument("run_dir", metavar="RUN_DIR")
    exp.add_argument("--out", required=True, help="a new or empty folder")
    exp.add_argument("--round", type=int, help="the round's adapters (default: the last checkpoint)")
    exp.add_argument("--merge", action="store_true", help="a merged Hugging Face checkpoint")
    exp.add_argument("--site-state", metavar="DIR", help="personalised runs, on a site: its state folder "
                     "(<state-dir>/<run>/partition-<id>), to export its global + local adapters")
    exp.set_defaults(func=_export)
    pred = sub.add_parser("predict", help="answer questions with a run's or an export's adapters",
                          description="One question (--image, --question, optionally --options), or every "
                          "sample of a data folder (--data) into predictions.jsonl and metrics.json.")
    pred.add_argument("model", metavar="MODEL", help="a run folder, an export or a merged checkpoint")
    pred.add_argument("--image", help="picture file")
    pred.add_argument("--question", help="question text")
    pred.add_argument("--options", nargs="+", help="score these answers instead of generating one")
    pred.add_argument("--max-new-tokens", type=int, default=32)
    pred.add_argument("--data", help="a data folder to answer all of")
    pred.add_argument("--format", help="its data.format (default: anther's own)")
    pred.add_argument("--split", default="test")
    pred.add_argument("--limit", type=int, help="samples (a stratified seeded sample; default: the run's "
                      "eval.server_test_size)")
    pred.add_argument("--out", help="folder for predictions.jsonl and metrics.json (default: predictions)")
    pred.add_argument("--base", help="the base checkpoint, where it is not where the run had it")
    pred.add_argument("--round", type=int, help="a run folder's round (default: its last checkpoint)")
    pred.add_argument("overrides", nargs="*", help="config keys, e.g. backbone.mode=remote backbone.address=H:P")
    pred.set_defaults(func=_predict)


# the generated sets `anther data generate --set NAME` writes: their module under anther.data -> title
GENERATED_SETS = {"shapes_vqa": "ShapesVQA", "quadrants_vqa": "QuadrantsVQA"}


def _generate_data(args: argparse.Namespace) -> int:
    import importlib

    from anther.core.sample import write_split

    title, generate = GENERATED_SETS[args.set], importlib.import_module(f"anther.data.{args.set}").generate
    out = Path(args.out)
    write_split(generate(args.train, args.seed, prefix="train"), out, "train")
    write_split(generate(args.test, args.seed + 1_000_003, prefix="test"), out, "test")
    print(f"{title} written to {out} ({args.train} train, {args.test} test); train on it with "
          f"`anther simulate data.path={out}`")
    return 0


def _data_report(args: argparse.Namespace) -> int:
    from anther.data.client_data import dataset_dir
    from anther.data.partition_report import write_partition_report
    from anther.simulations.experiment import load_config

    cfg = load_config(args.experiment, args.overrides, args.config_dir)
    out = Path(args.out or f"partition-{cfg.scenario.name}")
    png = write_partition_report(cfg, dataset_dir(cfg), out)
    print(f"partition report written to {png} and {out / 'partition.json'}")
    return 0


def _bench_perf(args: argparse.Namespace) -> int:
    """``anther bench perf [PERF_KEY=VALUE | EXPERIMENT_OVERRIDE ...]``: keys of the perf config
    (``sections=[sharing]``) set the bench; anything else is an override of its experiment."""
    import json
    import shlex

    from anther.bench.perf.bench import PerfBench, load_perf, perf_keys
    from anther.bench.perf.report import markdown, plot
    from anther.bench.results import results_dir

    mine = [o for o in args.overrides if o.split("=", 1)[0] in perf_keys()]
    experiment = [o for o in args.overrides if o not in mine]
    cfg = load_perf(args.bench, mine, args.experiment, args.config_dir)
    cfg.overrides = [*cfg.overrides, *experiment]
    out = Path(args.out or results_dir("perf")).expanduser()
    command = shlex.join(["anther", "bench", args.bench, *args.overrides, *(["--out", args.out] if args.out else [])])
    if args.report_only:
        result = json.loads((out / "perf.json").read_text())
    else:
        result = PerfBench(cfg, out).run()
    (out / "perf.md").write_text(markdown(result, command))
    plot(result, out)
    print((out / "perf.md").read_text())
    print(f"written to {out / 'perf.json'} and {out / 'perf.md'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import shlex

    if Path(args.bench).stem == "perf":
        return _bench_perf(args)
    from anther.bench.grid import load_bench
    from anther.bench.grid_report import write_report
    from anther.bench.results import results_dir

    bench = load_bench(args.bench, args.methods, args.scenarios, args.seeds, args.experiment, args.config_dir)
    out = Path(args.out or results_dir(Path(args.bench).stem)).expanduser()
    grid_args = [args.bench, *args.overrides, "--out", str(out), "-e", bench.experiment,
                 *(["--config-dir", bench.config_dir] if bench.config_dir else []),
                 *[a for k in ("methods", "scenarios", "seeds") if (v := getattr(args, k))
                   for a in (f"--{k}", *map(str, v))]]
    command = shlex.join(["anther", "bench", *grid_args])
    if args.report_only:
        print(f"report written to {write_report(bench, out, args.overrides, command)}")
        return 0
    if args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: give at least 1")
    out.mkdir(parents=True, exist_ok=True)
    if args.runner is not None:  # one of --jobs N runners: the watching process writes the report
        return _bench_runner(bench, out, args)
    def report() -> Path:
        return write_report(bench, out, args.overrides, command)

    if args.jobs == 1:
        _run_bench_grid(bench, out, args.overrides, report)
    else:
        _run_bench_runners(bench, out, args, [sys.executable, "-m", "anther.cli", "bench", *grid_args], report)
    return _bench_summary(bench, out, args.overrides, report())


def _run_bench_grid(bench: DictConfig, out: Path, overrides: list[str], report: Callable[[], object]) -> None:
    from anther.bench.grid import run_grid
    from anther.simulations.launcher import exit_on_sigterm

    with exit_on_sigterm():
        run_grid(bench, out, overrides, on_cell=lambda _: report())


def _bench_runner(bench: DictConfig, out: Path, args: argparse.Namespace) -> int:
    from anther.bench.grid import run_grid
    from anther.simulations.launcher import exit_on_sigterm

    with exit_on_sigterm():
        outcomes = run_grid(bench, out, args.overrides, claims=Path(args.claims),
                            say=lambda line: print(f"[runner {args.runner}] {line}", flush=True))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _run_bench_runners(bench: DictConfig, out: Path, args: argparse.Namespace, command: list[str],
                       report: Callable[[], object]) -> None:
    """``--jobs N``: N runners share the grid; the report is rewritten whenever a cell finishes."""
    from anther.bench.grid import check_grid, unfinished
    from anther.bench.grid_workers import run_runners

    check_grid(bench, args.overrides, out / "cells")  # a typo fails here, once, not in every runner
    left = len(unfinished(bench, out, args.overrides))

    def progress() -> None:
        nonlocal left
        now = len(unfinished(bench, out, args.overrides))
        if now != left:
            left = now
            report()

    run_runners(command, args.jobs, out / "claims", progress)


def _bench_summary(bench: DictConfig, out: Path, overrides: list[str], report: Path) -> int:
    """Say how many cells have a finished result; 1 if any has not (re-running retries those)."""
    from anther.bench.grid import cells, unfinished

    missing = [c.key for c in unfinished(bench, out, overrides)]
    total = len(cells(bench))
    print(f"report written to {report}; {total - len(missing)} of {total} cells finished"
          + (f"; not finished: {', '.join(missing)} (run the same command again to retry them)" if missing else ""))
    return 1 if missing else 0


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="run a grid of methods x scenarios x seeds and report it",
                           description="Run every cell of a bench config (configs/bench/NAME.yaml) that is not "
                           "finished yet, each as its own run in OUT/cells/<method>__<scenario>__seed<k>/, then "
                           "write OUT/report.md, report.json and plots. Re-running resumes (docs/benchmarks.md).")
    bench.add_argument("bench", help="bench config name (e.g. heterogeneity) or a YAML file")
    _add_experiment_arguments(bench, default=None)
    bench.add_argument("--out", help="output folder (default: $ANTHER_HOME/bench/NAME)")
    bench.add_argument("--methods", nargs="+", help="only these methods of the config")
    bench.add_argument("--scenarios", nargs="+", help="these scenarios instead of the config's")
    bench.add_argument("--seeds", nargs="+", type=int, help="these seeds instead of the config's")
    bench.add_argument("--report-only", action="store_true", help="rebuild the report from finished cells")
    bench.add_argument("--jobs", type=int, default=1,
                       help="cells run at once, each in its own runner process (an end-to-end cell keeps "
                            "about one core busy: use the number of cores)")
    bench.add_argument("--claims", help=argparse.SUPPRESS)  # set by --jobs for its runners
    bench.add_argument("--runner", type=int, help=argparse.SUPPRESS)
    bench.add_argument("overrides", nargs="*", help="Hydra overrides added to every cell, e.g. "
                       "federation.rounds=1 (before the --options, which take several values)")
    bench.set_defaults(func=_bench)


def _client_names(spec: str) -> list[str]:
    """``--clients 3`` -> client-0, client-1, client-2; ``--clients alice,bob`` -> those names."""
    if spec.isdigit():
        return [f"client-{i}" for i in range(int(spec))]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--clients {spec!r}: give a number or comma-separated names")
    return names


def _certs(args: argparse.Namespace) -> int:
    from anther.backbone.certs import make_certs, write_tokens

    out = Path(args.out)
    if (out / "ca.pem").exists() and not args.force:
        raise ValueError(f"--out {out} already holds a CA (ca.pem); a new one would invalidate every "
                         "certificate it signed. Choose another folder or pass --force")
    clients = _client_names(args.clients)
    files = make_certs(out, args.server_name, clients, args.days)
    tokens = write_tokens(out, clients)
    print(f"CA          {files.ca_cert}  (keep {files.ca_key.name} offline)")
    print(f"server      {files.server_cert} {files.server_key} and {out / 'tokens.json'}")
    for name, (cert, key) in files.clients.items():
        print(f"{name:<11} {cert} {key} {tokens[name]}")
    print("give each site ca.pem and its own .token (or .pem + .key for mutual TLS); "
          "see docs/deployment.md")
    return 0


def _tokens(args: argparse.Namespace) -> dict[str, str]:
    """tokens.json of --tls-dir (if there) merged with every --tokens file."""
    from anther.backbone.certs import TOKENS_FILE, read_tokens

    files = [Path(args.tls_dir) / TOKENS_FILE] if args.tls_dir else []
    files = [f for f in files if f.is_file()] + [Path(f) for f in args.tokens]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"--tokens file not found: {', '.join(missing)}")
    return {name: token for f in files for name, token in read_tokens(f).items()}


def _backbone_serve(args: argparse.Namespace) -> int:
    import logging

    import torch

    from anther.backbone.quantization import check_quantization
    from anther.backbone.service.auth import ServerTls
    from anther.backbone.service.decode import Limits, MiB
    from anther.backbone.service.server import serve
    from anther.backbone.supervisor import announce_ready, stop_with_parent

    if not (Path(args.model) / "config.json").is_file():
        raise FileNotFoundError(f"--model {args.model} is not a Hugging Face checkpoint directory "
                                "(no config.json)")
    if bool(args.tls_dir) == args.insecure:
        raise ValueError("give --tls-dir DIR (made by `anther certs --out DIR`) for TLS, or --insecure "
                         "for plain text on a network you trust; exactly one of the two")
    if args.mtls and not args.tls_dir:
        raise ValueError("--mtls needs --tls-dir (its ca.pem signs the client certificates)")
    check_quantization(args.quantization, args.device)  # before anything is loaded or listens
    for flag, value, least in (("--max-request-tokens", args.max_request_tokens, 1),
                               ("--max-calls-per-client", args.max_calls_per_client, 1),
                               ("--max-inflight-mib", args.max_inflight_mib, args.max_request_mib),
                               ("--read-timeout-s", args.read_timeout_s, 0.001)):
        if value < least:
            raise ValueError(f"{flag} {value} must be at least {least:g}")
    tls = ServerTls.from_dir(args.tls_dir, mutual=args.mtls) if args.tls_dir else None
    tokens = _tokens(args) or None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("anther.backbone")
    if tokens is None and not args.mtls:
        log.warning("no bearer tokens and no client certificates: anyone who reaches this port can use it")
    limits = Limits(max_sequence_length=args.max_sequence_length, max_request_bytes=args.max_request_mib * MiB,
                    max_request_tokens=args.max_request_tokens, max_calls_per_client=args.max_calls_per_client,
                    max_inflight_bytes=args.max_inflight_mib * MiB, read_timeout_s=args.read_timeout_s)
    server, port, service = serve(args.model, f"{args.host}:{args.port}", tls, tokens, args.window_ms,
                                  args.max_batch, not args.no_batching, limits, getattr(torch, args.dtype),
                                  device=args.device, quantization=args.quantization, autocast=args.autocast)
    log.info("backbone of %s serving on %s:%d (tls=%s, mutual tls=%s, %d client tokens)", args.model,
             args.host, port, tls is not None, args.mtls, len(tokens or {}))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop(grace=1.0))
    if args.parent_pid is not None:
        stop_with_parent(server, args.parent_pid)
    if args.ready_file is not None:
        announce_ready(Path(args.ready_file), port)
    server.wait_for_termination()
    stats = service.batcher.stats
    log.info("stopped after %d requests in %d batches (largest %d); calls per client: %s", stats.requests,
             stats.batches, stats.largest_batch, dict(service.callers) or "no tokens, not counted")
    return 0


def _add_backbone_parser(sub: argparse._SubParsersAction) -> None:
    backbone = sub.add_parser("backbone", help="the backbone service").add_subparsers(
        dest="backbone_command", required=True)
    srv = backbone.add_parser("serve", help="serve a checkpoint's frozen LLM to NanoEdge clients over gRPC",
                              description="Serve the frozen LLM of --model to NanoEdge clients "
                              "(TLS, bearer tokens, dynamic batching). Runs until interrupted.")
    srv.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    srv.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    srv.add_argument("--port", type=int, default=50051, help="0: any free port (see --ready-file)")
    srv.add_argument("--tls-dir", help="folder made by `anther certs`: server.pem, server.key, ca.pem "
                     "and tokens.json (loaded when present)")
    srv.add_argument("--mtls", action="store_true", help="also require client certificates signed by ca.pem")
    srv.add_argument("--tokens", action="append", default=[], metavar="FILE",
                     help='more bearer tokens, JSON {"client": "token"}; repeatable')
    srv.add_argument("--insecure", action="store_true", help="no TLS (a network you trust only)")
    srv.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                     help="dtype the LLM computes in")
    srv.add_argument("--device", default="cpu", help="where the LLM runs: cpu, cuda, cuda:N")
    srv.add_argument("--autocast", default="none", choices=["none", "bfloat16", "float16"],
                     help="compute under autocast in this dtype, where the device supports it")
    srv.add_argument("--quantization", default="none", choices=QUANTIZATIONS,
                     help="hold the LLM in 8 or 4 bits (bitsandbytes; CUDA only)")
    srv.add_argument("--window-ms", type=float, default=5.0, help="dynamic batching window")
    srv.add_argument("--max-batch", type=int, default=32, help="sequences per batched pass")
    srv.add_argument("--no-batching", action="store_true")
    srv.add_argument("--max-sequence-length", type=int, help="default: the model's")
    srv.add_argument("--max-request-mib", type=int, default=256)
    srv.add_argument("--max-request-tokens", type=int, default=BackboneConfig.max_request_tokens,
                     help="sequences x tokens one request, and one batched pass, may hold (default: %(default)s); "
                     "over it a request is refused with RESOURCE_EXHAUSTED")
    srv.add_argument("--max-calls-per-client", type=int, default=BackboneConfig.max_calls_per_client,
                     help="calls one client (token, or host without tokens) may have in flight (default: "
                     "%(default)s); more are refused with UNAVAILABLE and retried")
    srv.add_argument("--max-inflight-mib", type=int, default=BackboneConfig.max_inflight_mib,
                     help="request MiB all calls in flight may hold together (default: %(default)s)")
    srv.add_argument("--read-timeout-s", type=float, default=BackboneConfig.read_timeout_s,
                     help="a call that sends nothing for this long is ended (default: %(default)s)")
    srv.add_argument("--ready-file", help="write {\"port\": N} here once listening (for supervisors)")
    srv.add_argument("--parent-pid", type=int, help="stop when this process is no longer the parent")
    srv.set_defaults(func=_backbone_serve)


def _add_model_report_parser(model: argparse._SubParsersAction) -> None:
    rep = model.add_parser("report", help="parameters and bytes each side holds and sends, split vs whole-model mode",
                           description="Builds each model's published configuration on the meta device (no "
                           "download, no memory) and prints what a NanoEdge client holds and sends in split mode "
                           "next to a LoRA client in whole-model mode.")
    rep.add_argument("--models", nargs="+", choices=REPORT_MODELS, metavar="MODEL",
                     help="of %(choices)s (default: all of them)")
    rep.add_argument("--adapter-rank", type=int, default=16, help="NanoAdapter rank (split mode)")
    rep.add_argument("--lora-rank", type=int, default=16, help="LoRA rank on q/k/v/o (whole-model mode)")
    rep.add_argument("--text-tokens", type=int, default=64, help="text tokens per sample besides the image's")
    rep.add_argument("--dtype", default="bfloat16", choices=FLOAT_DTYPES, help="weights as held")
    rep.add_argument("--wire-dtype", default="bfloat16", choices=WIRE_DTYPES, help="activations as sent")
    rep.add_argument("--json", help="also write the numbers to this JSON file")
    rep.set_defaults(func=_model_report)


def _add_experiment_arguments(parser: argparse.ArgumentParser, default: str | None = "default") -> None:
    """``-e`` and ``--config-dir``, the same for every command that starts from an experiment."""
    parser.add_argument("-e", "--experiment", default=default,
                        help="an experiment: a name in --config-dir or anther/configs, or a YAML file's path "
                        "(composed over anther's default experiment; docs/strategies.md)")
    parser.add_argument("--config-dir", help="a folder of your own experiments and config groups (scenario/NAME.yaml), "
                        "looked in before anther's")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anther", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run a federated simulation")
    _add_experiment_arguments(sim)
    sim.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. federation.rounds=3")
    sim.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last complete "
                     "checkpoint, into the same folder (docs/reliability.md)")
    sim.add_argument("--verbose", action="store_true",
                     help="show Flower's and Ray's own logs too (the run folder's flower.log keeps them anyway)")
    sim.set_defaults(func=_simulate)

    model = sub.add_parser("model", help="model checkpoints").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("init-tiny", help="create a tiny checkpoint directory (LLaVA unless --family)")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--family", default="llava", choices=FAMILY_NAMES, metavar="FAMILY",
                      help="a registered model family: %(choices)s (only llava is pretrained; give "
                      "--pretrain-steps 0 for the others)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--pretrain-steps", type=int, default=ModelConfig.tiny_pretrain_steps,
                      help="language-model pretraining steps (default: %(default)s, the experiment config's)")
    tiny.set_defaults(func=_init_tiny)
    pre = model.add_parser("pretrain", help="make the tiny LLaVA by its recipe: a checkpoint per seed, probed; "
                           "the best kept, with its model card")
    pre.add_argument("--out", required=True)
    pre.add_argument("--config", default="tiny_llava",
                     help="a name in anther/configs/pretrain or a YAML file (default: %(default)s: the shipped "
                     "model's recipe)")
    pre.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. seeds=[0,1,2] steps=3000")
    pre.set_defaults(func=_pretrain)
    probe = model.add_parser("probe", help="multiple-choice accuracy per question kind of a tiny LLaVA, untuned")
    probe.add_argument("--model", help="a tiny LLaVA folder (default: the default run's)")
    probe.add_argument("--per-task", type=int, default=60, help="questions per kind and domain set")
    probe.add_argument("--seed", type=int, default=99991)
    probe.add_argument("--json", help="also write the result to this file")
    probe.set_defaults(func=_probe)
    _add_model_report_parser(model)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_command", required=True)
    gen = data.add_parser("generate", help="write a built-in generated data set to a folder (docs/datasets.md)")
    gen.add_argument("--out", required=True)
    gen.add_argument("--set", choices=sorted(GENERATED_SETS), default="shapes_vqa",
                     help="shapes_vqa: the default run's data; quadrants_vqa: pictures and phrasing the tiny "
                     "model was never pretrained on")
    gen.add_argument("--train", type=int, default=4000)
    gen.add_argument("--test", type=int, default=400)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=_generate_data)
    rep = data.add_parser("report", help="print and plot what each client holds under a scenario",
                          description="Per-client sample counts, label histograms, modality presence and "
                          "domains for an experiment and scenario, e.g. `anther data report scenario=cross_i3t7`.")
    _add_experiment_arguments(rep)
    rep.add_argument("--out", help="folder for partition.png and partition.json (default: partition-<scenario>)")
    rep.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. scenario=missing_b30")
    rep.set_defaults(func=_data_report)

    app = sub.add_parser("app", help="write the Flower app flwr run submits (pyproject.toml and the anther "
                         "package, nothing else) to a folder: flwr run walks every file of the folder it is given")
    app.add_argument("--out", required=True, help="a new folder, or one this command wrote before (replaced)")
    app.set_defaults(func=_app)
    certs = sub.add_parser("certs", help="make a CA, server and client certificates and bearer tokens")
    certs.add_argument("--out", required=True, help="credentials folder to write")
    certs.add_argument("--clients", default="0", help="a number (client-0, client-1, ...) or comma-separated names")
    certs.add_argument("--server-name", action="append", default=[],
                       help="host name or IP clients dial the backbone at (localhost and 127.0.0.1 always); "
                       "repeatable")
    certs.add_argument("--days", type=int, default=365, help="validity of every certificate")
    certs.add_argument("--force", action="store_true", help="replace an existing CA in --out")
    certs.set_defaults(func=_certs)

    _add_export_parsers(sub)
    _add_backbone_parser(sub)
    _add_bench_parser(sub)
    return p


# benches with flags of their own: ``anther bench NAME ...`` hands the rest of the line to their main()
OWN_FLAG_BENCHES = {"real-shape": "anther.bench.real_shape"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"] and argv[1:2] and argv[1] in OWN_FLAG_BENCHES:
        return importlib.import_module(OWN_FLAG_BENCHES[argv[1]]).main(argv[2:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:  # a mistake in what was asked: nothing ran
        print(f"anther: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:  # a run that started and did not finish; its folder holds the traceback
        print(f"anther: error: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stopped) as e:  # what it started is stopped by now (the finally blocks)
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        print(f"anther: stopped by {signal.Signals(signum).name}; everything it started is stopped "
              "(a run continues with `anther simulate --resume RUN_DIR`)", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
