"""Seeded partner data shaped like the real thing, with the truth every DP figure estimates.

Three partners hold incident records: skewed areas (a few busy, many quiet), people with
several records, fractional values (a 0-1 rate, a latitude, a harm score), and timestamps
written in local time with an offset, across the March change to summer time (the offsets
differ within one file). `truth_*` compute, with pandas on the generated rows, exactly what the
node releases estimate: the first `max_rows` rows of each person, values clamped to the bounds,
times in the dataset's zone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PARTNERS = ("police", "fire", "council")
AREAS = tuple(f"A{i:02d}" for i in range(16))
ZONE = "America/Chicago"
MAX_ROWS = 3


def generate(partner: str, rows: int, seed: int) -> pd.DataFrame:
    """One partner's records, in source order."""
    rng = np.random.default_rng([seed, PARTNERS.index(partner)])
    weights = 1.0 / np.arange(1, len(AREAS) + 1) ** 0.8  # skewed: A00 busiest
    area = rng.choice(AREAS, rows, p=weights / weights.sum())
    people = rng.integers(0, rows // 2, rows)  # about two records per person, some many more
    start = pd.Timestamp("2025-03-01", tz=ZONE)
    local = start + pd.to_timedelta(rng.uniform(0, 30 * 86400, rows), unit="s")  # spans 9 March
    area_effect = np.array([AREAS.index(a) for a in area]) / len(AREAS)
    return pd.DataFrame(
        {
            "person_id": people,
            "area": area,
            "occurred_at": local.strftime("%Y-%m-%dT%H:%M:%S%z"),  # -0600 before 9 March, -0500 after
            "rate": np.clip(rng.beta(2, 6, rows) + 0.2 * area_effect, 0, 1),
            "latitude": rng.normal(44.95, 0.03, rows),
            "harm": rng.gamma(2.0, 8.0, rows) * (1 + area_effect),
        }
    )


NODE = """\
version: 1
partner: {partner}
data_dir: data
state_dir: state
datasets:
  incidents:
    path: incidents.csv
    identifier: person_id
    timezone: {zone}
    columns:
      person_id: {{type: int, required: true}}
      area: {{type: str}}
      occurred_at: {{type: datetime}}
      rate: {{type: float, min: 0, max: 1}}
      latitude: {{type: float}}
      harm: {{type: float}}
policy:
  allowed_datasets: [incidents]
  allowed_analyses: ["*"]
  max_rho_per_analysis: 10
  total_rho_cap: {{incidents: 100}}
  min_cell: 0
"""


def write_partners(folder: Path, rows: int, seed: int) -> dict[str, tuple[Path, pd.DataFrame]]:
    """Each partner's node.yaml and data; returns partner -> (node.yaml, its generated frame)."""
    out = {}
    for partner in PARTNERS:
        home = folder / partner
        (home / "data").mkdir(parents=True, exist_ok=True)
        frame = generate(partner, rows, seed)
        frame.to_csv(home / "data" / "incidents.csv", index=False)
        (home / "node.yaml").write_text(NODE.format(partner=partner, zone=ZONE))
        out[partner] = (home / "node.yaml", frame)
    return out


def analysed(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows a node analyses, as the truth sees them: first MAX_ROWS per person, local times."""
    kept = frame.loc[frame.groupby("person_id").cumcount() < MAX_ROWS].copy()
    when = pd.to_datetime(kept["occurred_at"], utc=True).dt.tz_convert(ZONE)
    kept["hour"] = when.dt.hour.map("{:02d}".format)
    kept["weekday"] = when.dt.day_of_week.map(
        dict(enumerate(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]))
    )
    return kept
