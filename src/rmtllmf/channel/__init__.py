"""Wireless uplink of R-MTLLMF: MIMO MAC with MMSE-SIC, worst-case jamming, vector transmission.

numpy/scipy only; knows nothing of models. Public API (stable names):

* eqs. 3-5: :func:`sic_rates`, :func:`user_mse`, :func:`sum_rate` (and :func:`sic_sinrs`,
  :func:`sic_order`);
* sec. II-C: :func:`ideal_noise`, :func:`worst_case_sum_rate_noise` (P1),
  :func:`worst_case_strongest_user_noise` (P2), :func:`reverse_waterfill`;
* scenarios: :class:`ScenarioConfig`, :func:`draw_realization`, :class:`ChannelRealization`;
* links: :func:`transmit_statistical` (``snr`` scale: :func:`snr_reference_power`),
  :func:`transmit_symbols`, :class:`SymbolLinkConfig`.
"""

from rmtllmf.channel.geometry import (
    PathLossConfig,
    free_space_loss_db,
    path_loss_db,
    place_users,
    rayleigh_fading,
)
from rmtllmf.channel.jammer import (
    ideal_noise,
    reverse_waterfill,
    worst_case_strongest_user_noise,
    worst_case_sum_rate_noise,
)
from rmtllmf.channel.link import (
    PAPER_SIGNAL_POWER,
    noise_variance,
    snr_reference_power,
    transmit_statistical,
)
from rmtllmf.channel.mac import sic_order, sic_rates, sic_sinrs, sum_rate, user_mse
from rmtllmf.channel.qam import QamConstellation, qam_ber_awgn
from rmtllmf.channel.scenario import (
    SCENARIOS,
    ChannelRealization,
    LargeScale,
    ScenarioConfig,
    draw_large_scale,
    draw_realization,
    noise_covariance,
    realize,
)
from rmtllmf.channel.symbol_link import (
    SymbolLinkConfig,
    SymbolLinkResult,
    UserLinkStats,
    transmit_symbols,
)
from rmtllmf.channel.units import (
    db_to_linear,
    dbm_to_watt,
    linear_to_db,
    thermal_noise_power,
    watt_to_dbm,
)

__all__ = [
    "PAPER_SIGNAL_POWER",
    "SCENARIOS",
    "ChannelRealization",
    "LargeScale",
    "PathLossConfig",
    "QamConstellation",
    "ScenarioConfig",
    "SymbolLinkConfig",
    "SymbolLinkResult",
    "UserLinkStats",
    "db_to_linear",
    "dbm_to_watt",
    "draw_large_scale",
    "draw_realization",
    "free_space_loss_db",
    "ideal_noise",
    "linear_to_db",
    "noise_covariance",
    "noise_variance",
    "path_loss_db",
    "place_users",
    "qam_ber_awgn",
    "rayleigh_fading",
    "realize",
    "reverse_waterfill",
    "sic_order",
    "sic_rates",
    "sic_sinrs",
    "snr_reference_power",
    "sum_rate",
    "thermal_noise_power",
    "transmit_statistical",
    "transmit_symbols",
    "user_mse",
    "watt_to_dbm",
    "worst_case_strongest_user_noise",
    "worst_case_sum_rate_noise",
]
