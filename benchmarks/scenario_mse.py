"""Mean per-user MSE (eq. 5) of each scenario over many seeds, with the default link budget or
another user power and jammer-to-noise ratio (the calibration against the paper's MSEs).

python benchmarks/scenario_mse.py --seeds 60
python benchmarks/scenario_mse.py --seeds 40 --tx-dbm -8 --jnr-db 50
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from rmtllmf.channel import SCENARIOS, ScenarioConfig, draw_realization, linear_to_db, user_mse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=60)
    parser.add_argument("--jnr-db", type=float, default=None)
    parser.add_argument("--tx-dbm", type=float, default=None, help="per-user power (dBm)")
    args = parser.parse_args()
    out = {}
    for scenario in SCENARIOS:
        extra = {} if args.tx_dbm is None else {"tx_power_dbm": args.tx_dbm}
        cfg = ScenarioConfig(scenario=scenario, jnr_db=args.jnr_db, **extra)
        mse = np.array(
            [
                user_mse(r.H, r.p, r.C_z)
                for r in (
                    draw_realization(cfg, np.random.default_rng(s)) for s in range(args.seeds)
                )
            ]
        )
        out[scenario] = {
            "mean_mse": float(mse.mean()),
            "median_user_mse": float(np.median(mse)),
            "mean_mse_db": float(linear_to_db(mse.mean())),
        }
    print(
        json.dumps(
            {"seeds": args.seeds, "jnr_db": args.jnr_db, "tx_dbm": args.tx_dbm, "scenarios": out},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
