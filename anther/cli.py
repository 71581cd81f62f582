"""The ``anther`` command line.

    anther simulate [-e EXPERIMENT] [HYDRA_OVERRIDE ...]   federated simulation (flwr run underneath)
    anther model init-tiny --out DIR                       make the tiny LLaVA checkpoint
    anther data generate --out DIR                         write ShapesVQA in the on-disk format
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anther.simulations.config import ConfigError


def _simulate(args: argparse.Namespace) -> int:
    from anther.simulations.assets import prepare_assets
    from anther.simulations.config import load_config
    from anther.simulations.launcher import flwr_run

    cfg = prepare_assets(load_config(args.experiment, args.overrides))  # fail fast, make assets here
    overrides = [*args.overrides, f"model.path={cfg.model.path}", f"data.path={cfg.data.path}"]
    return flwr_run(args.experiment, overrides, cfg.federation.num_clients)


def _init_tiny(args: argparse.Namespace) -> int:
    from anther.adapters.tiny_model import init_tiny

    out = init_tiny(Path(args.out), seed=args.seed, pretrain_steps=args.pretrain_steps)
    print(f"tiny LLaVA checkpoint written to {out}")
    return 0


def _generate_data(args: argparse.Namespace) -> int:
    from anther.simulations.datasets import shapes_vqa
    from anther.simulations.datasets.sample import write_split

    out = Path(args.out)
    write_split(shapes_vqa.generate(args.train, args.seed, prefix="train"), out, "train")
    write_split(shapes_vqa.generate(args.test, args.seed + 1_000_003, prefix="test"), out, "test")
    print(f"ShapesVQA written to {out} ({args.train} train, {args.test} test)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anther", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run a federated simulation")
    sim.add_argument("-e", "--experiment", default="default", help="config name in anther/simulations/configs")
    sim.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. federation.rounds=3")
    sim.set_defaults(func=_simulate)

    model = sub.add_parser("model", help="model checkpoints").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("init-tiny", help="create the tiny LLaVA checkpoint directory")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--pretrain-steps", type=int, default=2000)
    tiny.set_defaults(func=_init_tiny)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_command", required=True)
    gen = data.add_parser("generate", help="write the built-in ShapesVQA data set to a folder")
    gen.add_argument("--out", required=True)
    gen.add_argument("--train", type=int, default=4000)
    gen.add_argument("--test", type=int, default=400)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=_generate_data)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"anther: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
