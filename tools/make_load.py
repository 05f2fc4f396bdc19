"""Make the benchmark year's household load and combine it with the generation traces in data/traces/.

Source: richardsonpy (PyPI; the Python port of the CREST / Richardson et al. stochastic domestic electricity
model: an occupancy Markov chain drives the switching of an appliance set and of the lights, at one-minute
resolution). The model, as used here:
- a single-family house with 3 occupants (richardsonpy's `Occupancy(number_occupants=3)`), the year starting on
  a Wednesday like 1 January 2025, the year of the generation traces;
- lighting driven by the same place's sunlight: the hourly global and diffuse horizontal irradiance of the
  Greensboro TMY3 file pvlib ships (the file tools/make_traces.py uses), direct = global - diffuse;
- electric heating devices excluded (`prev_heat_dev=True`): the air conditioner, the appliance dreadpi
  controls, is a heat pump and is modelled by `dreadpi simulate` on top of this load;
- the year normalised (`do_normalization=True`) to richardsonpy's own standard consumption for a 3-person
  single-family house, 4,000 kWh;
- seeded (SEED, for both `random` and numpy's global generator, which richardsonpy uses) so the files are
  reproducible with the same library versions.
One-minute watts are averaged to 5 minutes and written as integer watts, a third column `consumption` beside
each generation trace: data/traces/greensboro-{5,8}kw-house-5min.csv.gz (`timestamp,watts,consumption`).
Run: .venv/bin/python tools/make_load.py (needs `pip install 'dreadpi[traces]'`; the files are committed, so
tests and CI never need it). Takes about a minute.
"""

from __future__ import annotations

import gzip
import os
import sys

SEED = 4755  # AS/NZS 4755, as in make_traces.py
OCCUPANTS = 3
SIZES_KW = (5, 8)  # the sizes the surplus claim is judged on; 3 kW adds 0.5 MB and no question
HERE = os.path.dirname(os.path.abspath(__file__))
TRACES = os.path.join(HERE, "..", "data", "traces")


def irradiance():  # noqa: ANN201 (two numpy arrays)
    """Hourly (direct, diffuse) horizontal irradiance of the Greensboro TMY3 year, in W/m²."""
    import numpy as np
    import pvlib

    path = os.path.join(os.path.dirname(pvlib.__file__), "data", "723170TYA.CSV")
    hourly, _ = pvlib.iotools.read_tmy3(path, coerce_year=2025, map_variables=True)
    hourly = hourly.sort_index()
    ghi, dhi = hourly["ghi"].to_numpy(float), hourly["dhi"].to_numpy(float)
    return np.clip(ghi - dhi, 0, None), dhi


def household_load(seed: int = SEED):  # noqa: ANN201 (a numpy array of 5-minute watts)
    import random

    import numpy as np
    from richardsonpy.classes import electric_load, occupancy
    from richardsonpy.functions import change_resolution

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (richardsonpy draws from the global generators)
    direct, diffuse = irradiance()
    direct = change_resolution.change_resolution(direct, old_res=3600, new_res=60)
    diffuse = change_resolution.change_resolution(diffuse, old_res=3600, new_res=60)
    wednesday = 3  # richardsonpy: 1 = Monday; 1 January 2025 was a Wednesday
    occ = occupancy.Occupancy(number_occupants=OCCUPANTS, initial_day=wednesday)
    load = electric_load.ElectricLoad(occ_profile=occ.occupancy, total_nb_occ=OCCUPANTS, q_direct=direct,
                                      q_diffuse=diffuse, is_sfh=True, prev_heat_dev=True, initial_day=wednesday,
                                      timestep=60, do_normalization=True)
    minutes = np.asarray(load.loadcurve, dtype=float)
    return minutes.reshape(-1, 5).mean(axis=1)


def combine(load, size: int) -> str:  # noqa: ANN001
    source = os.path.join(TRACES, f"greensboro-{size}kw-5min.csv.gz")
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    rows = lines[1:]
    if len(rows) != len(load):
        raise SystemExit(f"{source}: {len(rows)} steps, but the load has {len(load)}")
    out = ["timestamp,watts,consumption"] + [f"{row},{watts:.0f}" for row, watts in zip(rows, load)]
    path = os.path.join(TRACES, f"greensboro-{size}kw-house-5min.csv.gz")
    with gzip.GzipFile(path, "wb", mtime=0) as handle:  # mtime 0: the same input gives the same bytes
        handle.write(("\n".join(out) + "\n").encode())
    return path


def main() -> int:
    load = household_load()
    print(f"household load: {len(load)} steps, {load.sum() / 12 / 1000:.0f} kWh/year, mean {load.mean():.0f} W, "
          f"max {load.max():.0f} W")
    for size in SIZES_KW:
        print(combine(load, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
