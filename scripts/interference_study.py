"""Where the clean task-arithmetic merge of the embedded zoo loses each task's gain.

For every task ``i`` (validation split; gap units: ``(acc - acc_base) / (acc_ft - acc_base)``,
averaged over tasks before the ratio):

1. *Curves*: ``theta_0 + lambda tau_i`` (the task alone) against ``theta_0 + lambda sum_q tau_q``
   (the merge, eq. 6), over a lambda grid.
2. *Groups* at one lambda: the merge with the other tasks' vectors kept only in one parameter
   group, or everywhere but one group; and with the other vectors replaced by Gaussian noise of the
   same per-tensor mean and standard deviation.
3. *Function space*: on task ``i``'s images, the embedding shift caused by the other tasks'
   vectors relative to the shift caused by ``tau_i``, the non-additivity of the two, and how far
   each shift is from its first-order (JVP) prediction.
   Per pair: the shift that ``tau_j`` alone causes on task ``i``'s images over the shift
   ``tau_i`` causes there (at lambda = 1; an 8 x 8 matrix, rows ``i``).
4. *Tangent fine-tuning* (``--tangent``; Ortiz-Jimenez et al. 2023): each task fine-tuned in the
   base's tangent space, ``f(x; theta_0) + J(x; theta_0) delta``, merged as
   ``delta = lambda sum_q delta_q``, lambda chosen on validation and reported on test. The
   model is then exactly linear in the task vectors, which tells whether their non-linearity
   or their function-space overlap costs the gain.

    python scripts/interference_study.py [--root DIR] [--config '{"lr": 3e-4}'] [--tangent]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from rmtllmf.pools.tiny_vit_pool import TinyVitPool, ZooConfig, build_zoo
from rmtllmf.training.loops import accuracy, finetune

State = dict[str, torch.Tensor]


def group(name: str) -> str:
    """The parameter group of a tiny-vit parameter name."""
    if name.startswith("embeddings."):
        return name.split(".")[1]
    rules = [
        (("layer_norm", "layrnorm", "layernorm"), "norms"),
        (("q_proj", "k_proj"), "qk"),
        (("v_proj", "out_proj"), "vo"),
        (("fc1",), "fc1"),
        (("fc2",), "fc2"),
        (("visual_projection",), "projection"),
    ]
    return next((g for keys, g in rules if any(k in name for k in keys)), "other")


class Study:
    """Task vectors of a built zoo and the gap-unit accuracy of combinations of them."""

    def __init__(self, zoo: TinyVitPool) -> None:
        self.zoo = zoo
        self.base = zoo.base_state
        self.tasks = list(zoo.config.tasks)
        self.keys = [k for k, v in self.base.items() if v.is_floating_point()]
        self.taus = {
            t: {k: zoo.finetuned[t][k].float() - self.base[k].float() for k in self.keys}
            for t in self.tasks
        }
        self.acc_base = np.mean([zoo.base_accuracy(t, "val") for t in self.tasks])
        self.acc_ft = np.mean([zoo.finetuned_accuracy(t, "val") for t in self.tasks])

    def state(self, delta: Callable[[str], torch.Tensor]) -> State:
        """``theta_0 + delta(k)`` on the floating-point parameters."""
        return {k: self.base[k] + delta(k) if k in self.keys else self.base[k] for k in self.base}

    def gap(self, accuracies: list[float]) -> float:
        """Mean accuracy in gap units."""
        return float((np.mean(accuracies) - self.acc_base) / (self.acc_ft - self.acc_base))

    def others(self, task: str, key: str) -> torch.Tensor:
        """Sum of the other tasks' vectors at one parameter."""
        return sum((self.taus[j][key] for j in self.tasks if j != task), torch.zeros(()))

    def alone(self, task: str, lam: float) -> float:
        """Accuracy of ``theta_0 + lam tau_task`` on ``task``."""
        taus = self.taus[task]
        return self.zoo.task_accuracy(self.state(lambda k: lam * taus[k]), [task], "val")[task]

    def merged(self, lam: float) -> list[float]:
        """Accuracy of the merge ``theta_0 + lam sum_q tau_q`` (eq. 6) on every task."""
        state = self.state(lambda k: lam * sum(self.taus[t][k] for t in self.tasks))
        return list(self.zoo.task_accuracy(state, self.tasks, "val").values())

    def curves(self, lambdas: list[float]) -> list[dict[str, float]]:
        return [
            {
                "lambda": lam,
                "alone": self.gap([self.alone(t, lam) for t in self.tasks]),
                "merged": self.gap(self.merged(lam)),
            }
            for lam in lambdas
        ]

    def with_others(
        self, lam: float, keep: Callable[[str], bool], noise: bool = False, seed: int = 0
    ) -> float:
        """Gap units of ``theta_0 + lam tau_i + lam sum_{j != i} tau_j``, the other vectors kept
        only where ``keep(key)`` (replaced by moment-matched noise with ``noise``)."""
        gen = torch.Generator().manual_seed(seed)
        accs = []
        for t in self.tasks:

            def delta(k: str, t: str = t) -> torch.Tensor:
                d = lam * self.taus[t][k]
                if keep(k):
                    o = self.others(t, k)
                    if noise:
                        o = torch.randn(o.shape, generator=gen) * o.std() + o.mean()
                    d = d + lam * o
                return d

            accs.append(self.zoo.task_accuracy(self.state(delta), [t], "val")[t])
        return self.gap(accs)

    def groups(self, lam: float) -> dict[str, object]:
        names = sorted({group(k) for k in self.keys})

        def only(g: str) -> float:
            return self.with_others(lam, lambda k: group(k) == g)

        def all_but(g: str) -> float:
            return self.with_others(lam, lambda k: group(k) != g)

        return {
            "lambda": lam,
            "own_only": self.with_others(lam, lambda k: False),
            "all_others": self.with_others(lam, lambda k: True),
            "noise_matched_others": self.with_others(lam, lambda k: True, noise=True),
            "others_only_in": {g: only(g) for g in names},
            "others_except": {g: all_but(g) for g in names},
        }

    def function_space(self, lam: float, n_images: int = 200) -> dict[str, float]:
        model = self.zoo.model_from_state(self.base)
        p0 = {k: self.base[k].float() for k in self.keys}

        def f(params: State, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = functional_call(model, params, (x,))
            return out

        rows = []
        for t in self.tasks:
            x = self.zoo.preprocess(torch.from_numpy(self.zoo.data[t]["val"][0][:n_images]))
            own = {k: lam * self.taus[t][k] for k in self.keys}
            oth = {k: lam * self.others(t, k) for k in self.keys}
            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
                z0 = f(p0, x)
                d_own = f({k: p0[k] + own[k] for k in self.keys}, x) - z0
                d_oth = f({k: p0[k] + oth[k] for k in self.keys}, x) - z0
                d_all = f({k: p0[k] + own[k] + oth[k] for k in self.keys}, x) - z0
                lin_own = jvp(lambda p, x=x: f(p, x), (p0,), (own,))[1]
                lin_oth = jvp(lambda p, x=x: f(p, x), (p0,), (oth,))[1]
            rows.append(
                [
                    float(d_oth.norm() / d_own.norm()),
                    float((d_all - d_own - d_oth).norm() / d_all.norm()),
                    float((d_own - lin_own).norm() / d_own.norm()),
                    float((d_oth - lin_oth).norm() / d_oth.norm()),
                    float(d_own.norm() / z0.norm()),
                ]
            )
        r = np.mean(rows, axis=0)
        return {
            "lambda": lam,
            "others_over_own_shift": float(r[0]),
            "non_additivity": float(r[1]),
            "own_shift_nonlinearity": float(r[2]),
            "others_shift_nonlinearity": float(r[3]),
            "own_shift_over_embedding": float(r[4]),
        }


def pairwise_shift(study: Study, n_images: int = 200) -> dict[str, dict[str, float]]:
    """``||f_j(x_i) - f_0(x_i)|| / ||f_i(x_i) - f_0(x_i)||`` for every pair, where ``f_q`` is the
    model ``theta_0 + tau_q`` and ``x_i`` are task ``i``'s validation images."""
    zoo = study.zoo
    models = {t: zoo.model_from_state(zoo.finetuned[t]) for t in study.tasks}
    base = zoo.model_from_state(study.base)
    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for i in study.tasks:
            x = zoo.preprocess(torch.from_numpy(zoo.data[i]["val"][0][:n_images]))
            z0 = base(x)
            own = float((models[i](x) - z0).norm())
            out[i] = {j: float((models[j](x) - z0).norm()) / own for j in study.tasks}
    return out


class Tangent(nn.Module):
    """``f(x; theta_0) + J(x; theta_0) delta``: the model linearised at the base, trainable in
    ``delta`` only."""

    def __init__(self, model: nn.Module, delta: State | None = None) -> None:
        super().__init__()
        self.model = model
        self.names = [n for n, _ in model.named_parameters()]
        self.p0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.delta = nn.ParameterList(
            nn.Parameter(torch.zeros_like(self.p0[n]) if delta is None else delta[n].clone())
            for n in self.names
        )
        for p in model.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def f(params: State) -> torch.Tensor:
            out: torch.Tensor = functional_call(self.model, params, (x,))
            return out

        tangent = dict(zip(self.names, self.delta, strict=True))
        with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no forward-mode AD
            out, jv = jvp(f, (self.p0,), (tangent,))
        return out + jv

    def vector(self) -> State:
        """The tangent task vector ``delta``."""
        return {n: d.detach().clone() for n, d in zip(self.names, self.delta, strict=True)}


def _tangent_finetune(root: str, config: str, task: str, index: int) -> State:
    """Worker: one task's tangent fine-tune with the zoo's own settings and seed."""
    torch.set_num_threads(1)
    zoo = build_zoo(root, ZooConfig.model_validate_json(config))
    cfg = zoo.config
    model = Tangent(zoo.model_from_state(zoo.base_state))
    x, y = zoo.data[task]["train"]
    seed = cfg.seed * 1000 + index
    torch.manual_seed(seed)
    finetune(
        model,
        zoo.heads[task],
        x,
        y,
        steps=cfg.steps,
        batch=cfg.batch,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=seed,
        anchor=zoo.anchor(task),
    )
    return model.vector()


def tangent_study(root: Path, zoo: TinyVitPool, workers: int) -> dict[str, object]:
    """Tangent fine-tunes of every task, their task-arithmetic merge, lambda on validation."""
    tasks = list(zoo.config.tasks)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        futures = [
            ex.submit(_tangent_finetune, str(root), zoo.config.model_dump_json(), t, i)
            for i, t in enumerate(tasks)
        ]
        deltas = {t: f.result() for t, f in zip(tasks, futures, strict=True)}
    base = zoo.model_from_state(zoo.base_state)

    def acc(delta: State, task: str, split: str) -> float:
        return accuracy(Tangent(base, delta).eval(), zoo.heads[task], *zoo.data[task][split])

    def merged(lam: float, split: str) -> float:
        delta = {n: lam * sum(deltas[t][n] for t in tasks) for n in deltas[tasks[0]]}
        return float(np.mean([acc(delta, t, split) for t in tasks]))

    ft = {s: float(np.mean([acc(deltas[t], t, s) for t in tasks])) for s in ("val", "test")}
    base_acc = {
        s: float(np.mean([zoo.base_accuracy(t, s) for t in tasks])) for s in ("val", "test")
    }
    grid = [0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]
    val = {lam: merged(lam, "val") for lam in grid}
    best = max(grid, key=lambda lam: val[lam])
    test = merged(best, "test")
    return {
        "finetuned": ft,
        "base": base_acc,
        "merged_val": val,
        "lambda": best,
        "merged_test": test,
        "gap_recovery_test": (test - base_acc["test"]) / (ft["test"] - base_acc["test"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path.home() / ".cache/rmtllmf/zoo")
    parser.add_argument("--config", default="{}", help="ZooConfig overrides as JSON")
    parser.add_argument("--group-lambda", type=float, default=0.4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tangent", action="store_true", help="add the tangent fine-tuning run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    zoo = build_zoo(args.root, ZooConfig(**json.loads(args.config)), workers=args.workers)
    study = Study(zoo)
    report = {
        "config": zoo.config.model_dump(),
        "acc_base_val": study.acc_base,
        "acc_ft_val": study.acc_ft,
        "curves": study.curves([0.1, 0.2, 0.3, 0.5, 0.7, 1.0]),
        "groups": study.groups(args.group_lambda),
        "function_space": [study.function_space(lam) for lam in (0.3, 0.5)],
        "pairwise_shift": pairwise_shift(study),
    }
    if args.tangent:
        report["tangent"] = tangent_study(args.root, zoo, args.workers)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
