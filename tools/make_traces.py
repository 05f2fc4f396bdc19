"""Make the year-long 5-minute generation traces in data/traces/ (test and benchmark input for `simulate`).

Source: the typical meteorological year file pvlib ships in its wheel, `pvlib/data/723170TYA.CSV` (TMY3,
Greensboro NC, USA; hourly irradiance and temperature, local standard time UTC-5), turned into AC output of a
south-facing 20° array with pvlib's PVWatts model, for a few system sizes.

Clouds: hourly data interpolated to 5 minutes has no transients, and transients are what make a policy flap.
So a documented stochastic cloud model is applied, seeded (SEED) so the files are reproducible:
- the hour's clear-sky index k = GHI / clear-sky GHI (pvlib Ineichen) says how cloudy the hour was;
- within the hour, the 5-minute index follows an AR(1) process (lag-1 correlation 0.7) around k whose spread
  is largest for broken cloud (k near 0.5) and vanishes for clear (k near 1) or overcast (k near 0) hours;
- the 5-minute values are rescaled so each hour's mean GHI equals the TMY hour: energy is preserved.
Run: .venv/bin/python tools/make_traces.py (needs `pip install pvlib`; the files are committed).
"""

from __future__ import annotations

import gzip
import os
import sys

SEED = 4755  # AS/NZS 4755
SIZES_KW = (3.0, 5.0, 8.0)
YEAR = 2025
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "traces")


def generation(size_kw: float, seed: int = SEED):  # noqa: ANN201 (a pandas Series)
    import numpy as np
    import pandas as pd
    import pvlib

    path = os.path.join(os.path.dirname(pvlib.__file__), "data", "723170TYA.CSV")
    hourly, meta = pvlib.iotools.read_tmy3(path, coerce_year=YEAR, map_variables=True)
    hourly = hourly.sort_index()
    tz = hourly.index.tz
    location = pvlib.location.Location(meta["latitude"], meta["longitude"], tz=int(meta["TZ"]),
                                       altitude=meta["altitude"])
    # TMY3 stamps mark the end of the hour: 5-minute steps of hour h are h-1:00 .. h-1:55.
    start = hourly.index[0] - pd.Timedelta(hours=1)
    index = pd.date_range(start, periods=len(hourly) * 12, freq="5min", tz=tz)
    clear = location.get_clearsky(index, model="ineichen")["ghi"].to_numpy()
    ghi_hour = np.repeat(hourly["ghi"].to_numpy(), 12)
    clear_hour = clear.reshape(-1, 12).mean(axis=1).repeat(12)
    k = np.where(clear_hour > 5, np.clip(ghi_hour / np.maximum(clear_hour, 1e-9), 0, 1.2), 0.0)

    rng = np.random.default_rng(seed)
    noise = np.empty(len(index))
    state = 0.0
    shocks = rng.standard_normal(len(index))
    for i, shock in enumerate(shocks):  # AR(1), lag-1 correlation 0.7, unit variance
        state = 0.7 * state + 0.714 * shock
        noise[i] = state
    spread = 0.9 * k * (1 - np.minimum(k, 1))  # 0 for clear or overcast, about 0.22 at k = 0.5
    k5 = np.clip(k + spread * noise * 1.6, 0.03, 1.3)
    ghi = clear * k5
    sums = ghi.reshape(-1, 12).sum(axis=1)
    scale = np.where(sums > 0, ghi_hour[::12] * 12 / np.maximum(sums, 1e-9), 0.0)
    ghi = ghi * np.repeat(scale, 12)

    solpos = location.get_solarposition(index)
    dni_dhi = pvlib.irradiance.erbs(ghi, solpos["zenith"], index)
    poa = pvlib.irradiance.get_total_irradiance(20, 180, solpos["apparent_zenith"], solpos["azimuth"],
                                                dni_dhi["dni"], ghi, dni_dhi["dhi"])["poa_global"].fillna(0)
    air = np.repeat(hourly["temp_air"].to_numpy(), 12)
    wind = np.repeat(hourly["wind_speed"].to_numpy(), 12)
    cell = pvlib.temperature.faiman(poa, air, wind)
    dc = pvlib.pvsystem.pvwatts_dc(poa, cell, pdc0=size_kw * 1000, gamma_pdc=-0.004) * 0.86  # PVWatts losses
    ac = pvlib.inverter.pvwatts(dc, pdc0=size_kw * 1000 / 1.1)
    return pd.Series(np.clip(np.nan_to_num(ac), 0, None), index=index)


def write(series, path: str) -> None:  # noqa: ANN001
    offset = series.index[0].strftime("%z")
    offset = f"{offset[:3]}:{offset[3:]}"
    stamps = series.index.strftime("%Y-%m-%dT%H:%M:%S")
    lines = ["timestamp,watts"] + [f"{s}{offset},{w:.0f}" for s, w in zip(stamps, series.to_numpy())]
    with gzip.GzipFile(path, "wb", mtime=0) as handle:  # mtime 0: the same input gives the same bytes
        handle.write(("\n".join(lines) + "\n").encode())


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    for size in SIZES_KW:
        path = os.path.join(OUT, f"greensboro-{size:g}kw-5min.csv.gz")
        series = generation(size)
        write(series, path)
        print(f"{path}: {len(series)} steps, {series.sum() / 12 / 1000:.0f} kWh/year, max {series.max():.0f} W")
    return 0


if __name__ == "__main__":
    sys.exit(main())
