"""Rank spectra of the clean and the received task vectors: what the ``svd`` defense sees.

For a few weight matrices of the pool (:class:`SpectraConfig`; by default the attention query
and the MLP's first matrix of up to four layers), each matrix shaped as the defense shapes it
(its first dimension by the rest, :func:`rmtllmf.defense.blind.matrix_shape`), this module
measures the singular values ``s_1 >= s_2 >= ...`` of every user's clean task-vector matrix
``T_q`` and of what the BS received, ``R_q = T_q + E_q``, on each link × scenario where the
receiver defenses apply. Beside them stand the two edges of the noise for the BS's estimate of
user ``q``'s per-entry noise standard deviation ``sigma_q`` on that tensor
(:func:`rmtllmf.channel.noise_variance` through :func:`rmtllmf.study.experiment.noise_variances`):

* the Marchenko-Pastur edge ``sigma_q (sqrt(m) + sqrt(n))``
  (:func:`rmtllmf.defense.blind.mp_edge`): where the singular values of an ``m x n`` matrix of
  i.i.d. noise end;
* Gavish & Donoho's hard threshold ``lambda*(beta) sqrt(max(m, n)) sigma_q``, ``beta =
  min(m, n) / max(m, n)`` (:func:`rmtllmf.defense.blind.gd_threshold`): the one
  :func:`~rmtllmf.defense.blind.svd_denoise` keeps singular values above.

A received singular value above the threshold is a direction the ``svd`` defense keeps. The
clean spectrum against the same threshold says how much signal there is to keep: a rank-one
signal ``theta u v^T`` in such noise lifts a singular value out of the bulk only when
``theta > sigma (m n)^(1/4)`` (the BBP transition), and the threshold asks a little more.

:func:`rank_spectra` measures one :class:`RankSpectra` from the pool; the sweep stores it in
the results database (``rmtllmf.study.sweep.ensure_spectra``) so that the report draws it
without the pool.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from threadpoolctl import threadpool_limits

from rmtllmf.defense.blind import gd_threshold, matrix_shape, mp_edge
from rmtllmf.errors import InputError
from rmtllmf.fusion import VectorLayout
from rmtllmf.pools.base import MapCalls, ModelPool
from rmtllmf.study.experiment import (
    ExperimentConfig,
    LinkMode,
    Scenario,
    noise_variances,
    receive,
)

SPECTRA_META = "rank_spectra"
"""The results database's meta key that holds the stored :class:`RankSpectra` (JSON)."""

FloatArray = NDArray[np.floating]


class SpectraConfig(BaseModel):
    """Which matrices and receptions the rank spectra cover (frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tensors: tuple[str, ...] = Field(
        (
            "*self_attn.q_proj.weight",  # ViT / CLIP: attention query
            "*mlp.fc1.weight",  # ViT / CLIP: the MLP's first matrix
            "*attention.self.query.weight",  # BERT-style encoders
            "*intermediate.dense.weight",
        ),
        min_length=1,
        description="glob patterns of parameter names (one kind of matrix each); when none "
        "matches, evenly spaced matrices of the layout stand in",
    )
    per_pattern: int = Field(4, ge=1, description="matches kept per pattern, evenly spaced")
    links: tuple[LinkMode, ...] | None = Field(
        None, description="links measured; None: every link of the sweep with a known noise law"
    )
    scenarios: tuple[Scenario, ...] | None = Field(
        None, description="scenarios measured; None: every scenario of the sweep"
    )


def _evenly(items: Sequence[str], k: int) -> list[str]:
    """``k`` of ``items`` at evenly spaced positions, first and last included."""
    if len(items) <= k:
        return list(items)
    return [items[int(i)] for i in np.round(np.linspace(0, len(items) - 1, k))]


def select_tensors(layout: VectorLayout, cfg: SpectraConfig) -> list[str]:
    """The matrices measured: for each pattern of ``cfg.tensors`` (``fnmatch``), its matching
    matrices in layout order thinned to ``cfg.per_pattern`` evenly spaced ones; when no
    pattern matches (another model family), ``per_pattern × len(tensors)`` evenly spaced
    matrices of the layout."""
    matrices = [
        name for name, shape in zip(layout.names, layout.shapes, strict=True) if matrix_shape(shape)
    ]
    if not matrices:
        raise InputError("the task vectors hold no weight matrix (no tensor of 2 x 2 or more)")
    chosen: list[str] = []
    for pattern in cfg.tensors:
        hits = [n for n in matrices if fnmatch.fnmatchcase(n, pattern) and n not in chosen]
        chosen += _evenly(hits, cfg.per_pattern)
    return chosen or _evenly(matrices, cfg.per_pattern * len(cfg.tensors))


def _matrix(
    flat: FloatArray, layout: VectorLayout, index: int, seg: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Tensor ``index`` of a flat vector (tensor boundaries ``seg``) as the ``m x n`` matrix
    the svd defense sees."""
    shape = matrix_shape(layout.shapes[index])
    if shape is None:
        raise InputError(f"{layout.names[index]} of shape {layout.shapes[index]} is no matrix")
    part = np.asarray(flat[seg[index] : seg[index + 1]], dtype=np.float64)
    return part.reshape(shape)


def _svdvals(x: NDArray[np.float64]) -> tuple[float, ...]:
    """Singular values, descending (LAPACK's ``gesdd`` without vectors)."""
    return tuple(float(v) for v in np.linalg.svd(x, compute_uv=False))


@dataclass(frozen=True)
class TensorSpectra:
    """One weight matrix: its ``m x n`` shape as the svd defense sees it and every user's clean
    singular values (``clean[q]``, descending)."""

    name: str
    shape: tuple[int, int]
    clean: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class ReceptionSpectra:
    """One link × scenario: each user's MSE ``mu_q``, and per tensor ``t`` and user ``q`` the
    BS's per-entry noise standard deviation ``sigma[t][q]`` and the received singular values
    ``received[t][q]`` (descending). ``users[q]`` is the user's index in the clean list."""

    link: str
    scenario: str
    users: tuple[int, ...]
    mse: tuple[float, ...]
    sigma: tuple[tuple[float, ...], ...]
    received: tuple[tuple[tuple[float, ...], ...], ...]


def clean_spectra(
    layout: VectorLayout, names: Sequence[str], flats: Sequence[FloatArray]
) -> tuple[TensorSpectra, ...]:
    """The clean singular values of the matrices ``names`` of every user's flat vector."""
    index = {n: j for j, n in enumerate(layout.names)}
    seg = layout.segments
    out = []
    with threadpool_limits(limits=1, user_api="blas"):
        for name in names:
            j = index[name]
            shape = matrix_shape(layout.shapes[j])
            assert shape is not None  # select_tensors keeps matrices only
            out.append(
                TensorSpectra(
                    name=name,
                    shape=shape,
                    clean=tuple(_svdvals(_matrix(f, layout, j, seg)) for f in flats),
                )
            )
    return tuple(out)


def received_spectra(
    layout: VectorLayout,
    names: Sequence[str],
    received: Sequence[tuple[int, FloatArray]],
    noise_var: Sequence[FloatArray],
    *,
    link: str,
    scenario: str,
    mse: Sequence[float],
) -> ReceptionSpectra:
    """The received singular values of the matrices ``names`` of every ``(user, flat vector)``
    in ``received``, with each user's per-segment noise variances ``noise_var`` (the BS's
    estimate; ``sigma = sqrt`` of the tensor's entry) and MSEs ``mse`` (one per user of the
    clean list)."""
    if len(received) != len(noise_var):
        raise InputError(f"{len(received)} received vectors but {len(noise_var)} noise estimates")
    index = {n: layout.names.index(n) for n in names}
    seg = layout.segments
    with threadpool_limits(limits=1, user_api="blas"):
        values = tuple(
            tuple(_svdvals(_matrix(f, layout, index[n], seg)) for _, f in received) for n in names
        )
    return ReceptionSpectra(
        link=link,
        scenario=scenario,
        users=tuple(q for q, _ in received),
        mse=tuple(float(mse[q]) for q, _ in received),
        sigma=tuple(tuple(float(np.sqrt(v[index[n]])) for v in noise_var) for n in names),
        received=values,
    )


@dataclass(frozen=True)
class SpectraCount:
    """What one reception's spectra say, in numbers (``report.md``, ``summary.json``).

    ``values``: singular values measured (users × matrices × ``min(m, n)``); ``above``: received
    ones above the user's Gavish-Donoho threshold (the directions svd keeps); ``above_edge``:
    received ones above the Marchenko-Pastur edge; ``clean_above``: clean ones above that same
    threshold; ``clean_top`` and ``received_top``: the median over users and matrices of the
    largest clean and received singular value in units of the threshold; ``threshold`` and
    ``edge``: their mean over users and matrices.
    """

    link: str
    scenario: str
    values: int
    above: int
    above_edge: int
    clean_above: int
    clean_top: float
    received_top: float
    threshold: float
    edge: float

    def to_json(self) -> dict[str, Any]:
        """As in ``summary.json``'s ``rank_spectra`` list."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _round(values: Sequence[float]) -> list[float]:
    """Six significant digits: the stored precision."""
    return [float(f"{v:.6g}") for v in values]


@dataclass(frozen=True)
class RankSpectra:
    """The rank spectra of one study (see module docs): the clean ones of ``tasks``' vectors and
    those received on every measured link × scenario. ``key`` identifies what was measured
    (:func:`spectra_key`)."""

    key: str
    tasks: tuple[str, ...]
    tensors: tuple[TensorSpectra, ...]
    receptions: tuple[ReceptionSpectra, ...]

    def threshold(self, r: int, t: int, q: int) -> float:
        """Gavish-Donoho's threshold of reception ``r``, tensor ``t``, ``q``-th received user."""
        return gd_threshold(self.tensors[t].shape, self.receptions[r].sigma[t][q])

    def edge(self, r: int, t: int, q: int) -> float:
        """The Marchenko-Pastur edge of reception ``r``, tensor ``t``, ``q``-th received user."""
        return mp_edge(self.tensors[t].shape, self.receptions[r].sigma[t][q])

    def count(self, r: int) -> SpectraCount:
        """:class:`SpectraCount` of reception ``r``."""
        rec = self.receptions[r]
        values = above = above_edge = clean_above = 0
        tops: list[float] = []
        rtops: list[float] = []
        thresholds: list[float] = []
        edges: list[float] = []
        for t, tensor in enumerate(self.tensors):
            for q, user in enumerate(rec.users):
                thr, edge = self.threshold(r, t, q), self.edge(r, t, q)
                got, clean = np.array(rec.received[t][q]), np.array(tensor.clean[user])
                values += got.size
                above += int(np.sum(got > thr))
                above_edge += int(np.sum(got > edge))
                clean_above += int(np.sum(clean > thr))
                if thr > 0:
                    tops.append(float(clean[0]) / thr)
                    rtops.append(float(got[0]) / thr)
                thresholds.append(thr)
                edges.append(edge)

        def median(x: list[float]) -> float:
            return float(np.median(x)) if x else float("nan")

        return SpectraCount(
            link=rec.link,
            scenario=rec.scenario,
            values=values,
            above=above,
            above_edge=above_edge,
            clean_above=clean_above,
            clean_top=median(tops),
            received_top=median(rtops),
            threshold=float(np.mean(thresholds)) if thresholds else float("nan"),
            edge=float(np.mean(edges)) if edges else float("nan"),
        )

    def counts(self) -> list[SpectraCount]:
        """:meth:`count` of every reception, in order."""
        return [self.count(r) for r in range(len(self.receptions))]

    def to_json(self) -> dict[str, Any]:
        """The stored JSON object (values to six significant digits)."""
        return {
            "key": self.key,
            "tasks": list(self.tasks),
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "clean": [_round(c) for c in t.clean]}
                for t in self.tensors
            ],
            "receptions": [
                {
                    "link": r.link,
                    "scenario": r.scenario,
                    "users": list(r.users),
                    "mse": _round(r.mse),
                    "sigma": [_round(s) for s in r.sigma],
                    "received": [[_round(v) for v in per_user] for per_user in r.received],
                }
                for r in self.receptions
            ],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RankSpectra:
        """Read :meth:`to_json`'s object."""
        try:
            return cls(
                key=str(d["key"]),
                tasks=tuple(d["tasks"]),
                tensors=tuple(
                    TensorSpectra(
                        name=t["name"],
                        shape=(int(t["shape"][0]), int(t["shape"][1])),
                        clean=tuple(tuple(c) for c in t["clean"]),
                    )
                    for t in d["tensors"]
                ),
                receptions=tuple(
                    ReceptionSpectra(
                        link=r["link"],
                        scenario=r["scenario"],
                        users=tuple(r["users"]),
                        mse=tuple(r["mse"]),
                        sigma=tuple(tuple(s) for s in r["sigma"]),
                        received=tuple(tuple(tuple(v) for v in pu) for pu in r["received"]),
                    )
                    for r in d["receptions"]
                ),
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise InputError(
                f"stored rank spectra are malformed ({exc!r}); rerun the sweep"
            ) from exc


def spectra_key(pool_id: str, receptions: Sequence[ExperimentConfig], cfg: SpectraConfig) -> str:
    """Identity of a measurement: the pool, the receptions' configs and the tensor choice."""
    text = json.dumps([pool_id, [r.model_dump_json() for r in receptions], cfg.model_dump_json()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reception_spectra(
    pool: ModelPool, job: tuple[ExperimentConfig, SpectraConfig, bool]
) -> tuple[tuple[TensorSpectra, ...], ReceptionSpectra]:
    """One reception's spectra (``job``: its config, the tensor choice, and whether to measure
    the clean spectra too): :func:`~rmtllmf.study.experiment.receive` (the same channel use as a
    sweep run of that config) and the BS's noise estimate
    (:func:`~rmtllmf.study.experiment.noise_variances`)."""
    rcfg, cfg, with_clean = job
    rx = receive(pool, rcfg)
    layout = rx.clean[0].layout
    names = select_tensors(layout, cfg)
    tensors = clean_spectra(layout, names, [tv.flatten() for tv in rx.clean]) if with_clean else ()
    received = received_spectra(
        layout,
        names,
        [(q, tv.flatten()) for q, tv in rx.received],
        noise_variances(rcfg, rx, pool.base_state),
        link=rcfg.link,
        scenario=rcfg.scenario,
        mse=rx.mse.tolist(),
    )
    return tensors, received


def rank_spectra(
    pool: ModelPool,
    receptions: Sequence[ExperimentConfig],
    cfg: SpectraConfig,
    *,
    key: str = "",
    map_calls: MapCalls | None = None,
) -> RankSpectra:
    """Measure the rank spectra (module docs) of the clean vectors of the receptions' tasks and
    of what each reception delivers (:func:`reception_spectra`). Every reception has the same
    tasks. ``map_calls`` measures the receptions (e.g. on an executor's workers); by default
    they are measured here, one after another."""
    if not receptions:
        raise InputError("no receptions to measure rank spectra on")
    tasks = receptions[0].tasks
    if any(r.tasks != tasks for r in receptions):
        raise InputError("the receptions of one rank-spectra measurement must share their tasks")
    jobs = [(rcfg, cfg, i == 0) for i, rcfg in enumerate(receptions)]
    if map_calls is None:
        measured = [reception_spectra(pool, job) for job in jobs]
    else:
        measured = map_calls(reception_spectra, jobs)
    return RankSpectra(
        key=key,
        tasks=tuple(tasks),
        tensors=measured[0][0],
        receptions=tuple(received for _, received in measured),
    )
