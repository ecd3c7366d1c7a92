"""Per-user summary of one channel realization: the numbers a person reads in a table.

Theory only (eqs. 3-5 and the QAM BER at the post-MMSE SINR), plus optional Monte-Carlo
measurements from the symbol link, for the CLI and for experiment reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rmtllmf.channel.aircomp import design_mmse, design_zf
from rmtllmf.channel.mac import sic_order, sic_sinrs, sum_rate
from rmtllmf.channel.qam import qam_ber_awgn
from rmtllmf.channel.scenario import ChannelRealization, ScenarioConfig
from rmtllmf.channel.symbol_link import SymbolLinkConfig, UserLinkStats, transmit_symbols
from rmtllmf.channel.units import linear_to_db, watt_to_dbm


@dataclass(frozen=True)
class UserRow:
    """One user's channel figures (theory)."""

    user: int
    distance_m: float
    path_loss_db: float
    snr_db: float
    sic_position: int
    sinr_db: float
    rate_nats: float
    mse: float
    ber_theory: float


@dataclass(frozen=True)
class ChannelSummary:
    """A realization's per-user table and array-level figures."""

    scenario: str
    thermal_dbm: float
    jammer_dbm: float
    sum_rate_nats: float
    mean_mse: float
    users: list[UserRow]
    measured: list[UserLinkStats] | None = None
    aircomp: dict[str, float] | None = None
    """The merge's sum over this channel with every user's scale 1 (:func:`compare_aircomp`)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (``inf`` becomes the string ``"inf"``)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not np.isfinite(value):
                return str(value)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return {k: clean(v) for k, v in asdict(self).items()}


def summarize(
    cfg: ScenarioConfig, channel: ChannelRealization, modulation_order: int = 64
) -> ChannelSummary:
    """Theory for every user of ``channel`` (SNR per antenna is ``p||h||^2 / tr(C_z)``)."""
    sinr = sic_sinrs(channel.H, channel.p, channel.C_z)
    order = sic_order(channel.H, channel.p)
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    signal = channel.p * np.sum(np.abs(channel.H) ** 2, axis=0)
    snr = linear_to_db(signal / float(np.real(np.trace(channel.C_z))))
    ber = qam_ber_awgn(modulation_order, np.where(np.isinf(sinr), 1e300, sinr))
    rows = [
        UserRow(
            user=q,
            distance_m=float(channel.large_scale.distances_m[q]),
            path_loss_db=float(channel.large_scale.path_loss_db[q]),
            snr_db=float(snr[q]),
            sic_position=int(position[q]) + 1,
            sinr_db=float(linear_to_db(sinr[q])),
            rate_nats=float(np.log1p(sinr[q])),
            mse=float(1.0 / (1.0 + sinr[q])),
            ber_theory=float(ber[q]),
        )
        for q in range(cfg.n_users)
    ]
    return ChannelSummary(
        scenario=cfg.scenario,
        thermal_dbm=float(watt_to_dbm(channel.thermal_power)),
        jammer_dbm=float(watt_to_dbm(channel.jammer_power)),
        sum_rate_nats=sum_rate(channel.H, channel.p, channel.C_z),
        mean_mse=float(np.mean([r.mse for r in rows])),
        users=rows,
    )


def compare_aircomp(summary: ChannelSummary, channel: ChannelRealization) -> ChannelSummary:
    """Add the two receivers' MSE for the sum of unit-scale symbols: MMSE-SIC's
    ``sum_q mu_q`` (independent errors, eq. 5) beside AirComp's MMSE and unbiased designs
    (:mod:`rmtllmf.channel.aircomp`), with AirComp's mean transmit power over peak."""
    w = np.ones(channel.H.shape[1])
    mmse = design_mmse(channel.H, channel.p, channel.C_z, w)
    zf = design_zf(channel.H, channel.p, channel.C_z, w)
    figures = {
        "sic_sum_mse": float(sum(r.mse for r in summary.users)),
        "aircomp_mse": mmse.mse,
        "aircomp_zf_mse": zf.mse,
        "aircomp_energy": float(np.mean(np.minimum(mmse.energy / channel.p, 1.0))),
    }
    return ChannelSummary(**{**summary.__dict__, "aircomp": figures})


def measure(
    summary: ChannelSummary,
    channel: ChannelRealization,
    link: SymbolLinkConfig,
    n_symbols: int,
    rng: np.random.Generator,
    progress: Callable[[int], None] | None = None,
) -> ChannelSummary:
    """Add Monte-Carlo figures: ``n_symbols`` channel uses of uniformly random payload per user
    (uniform codes give uniform QAM symbols, the assumption of the BER closed form);
    ``progress`` is called with the channel uses finished."""
    k = int(np.log2(link.modulation_order))
    n_values = max(1, n_symbols * k // link.bits)
    payload = [rng.uniform(-1.0, 1.0, n_values).astype(np.float32) for _ in summary.users]
    stats = transmit_symbols(payload, channel, link, rng, progress=progress).stats
    return ChannelSummary(**{**summary.__dict__, "measured": stats})
