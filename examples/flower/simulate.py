"""The example app in Flower's simulation engine without a SuperLink: eight clients (one per
task of the embedded suite), the server merging over the jammed uplink.

    python examples/flower/simulate.py --rounds 5 --defense r-mtllmf --out flower-results

Each ``--key value`` is a key of ``[tool.flwr.app.config]`` (docs/flower.md); ``rounds.json``
under ``--out`` holds every round's metrics. ``flwr run examples/flower`` runs the same app
through a local SuperLink.
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

from flwr.simulation import run_simulation

from rmtllmf.integrations.flower_app import (
    RUN_CONFIG_KEYS,
    client_app,
    server_app,
    settings_from_run_config,
)

HERE = Path(__file__).parent


def main() -> None:
    defaults = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key, meaning in RUN_CONFIG_KEYS.items():
        kind = type(defaults[key]) if key in defaults else str
        parser.add_argument(f"--{key}", type=kind if kind is not bool else _flag, help=meaning)
    parser.add_argument("--clients-in-parallel", type=int, default=2, help="Ray actors (cores)")
    args = vars(parser.parse_args())
    parallel = args.pop("clients_in_parallel")
    chosen = {**defaults, **{k.replace("_", "-"): v for k, v in args.items() if v is not None}}
    settings = settings_from_run_config(chosen)
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app(settings),
        client_app=client_app(settings),
        num_supernodes=len(settings.run.tasks),
        backend_config={
            "client_resources": {"num_cpus": 1},
            "init_args": {"num_cpus": parallel},
        },
    )
    print(f"{settings.rounds} round(s) in {time.perf_counter() - t0:.1f} s; see {settings.out}")


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


if __name__ == "__main__":
    main()
