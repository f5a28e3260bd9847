"""Seeded synthetic partner data over real small areas, with a planted signal.

Three partners (police, fire, council) over the LSOA 2011 areas of Coventry. Each area has a
latent deprivation score; incident rates rise with it (about 4.5 times from least to most
deprived) and incidents cluster at night. Every partner uses its own source column names,
so the demo exercises the column mapping of `node.yaml`.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.keysets import load_keyset
from coordinator.embedded.residents import MultiAgency, multi_agency_residents
from node_agent.keys import write_key_pair
from node_agent.linkage import new_linkage_key
from privacy.keyfiles import write_secret

__all__ = [
    "PARTNERS",
    "area_deprivation",
    "federation_residents",
    "generate_partner",
    "write_federation",
    "write_many",
    "write_virtual_partner",
]

KEYSET = "coventry_lsoa11"
PARTNERS = ("police", "fire", "council")
_SOURCE_NAMES = {
    "police": {
        "person_id": "crime_ref_person",
        "area": "lsoa11cd",
        "occurred_at": "reported_at",
        "age": "victim_age",
        "harm": "harm_score",
        "category": "offence_group",
    },
    "fire": {
        "person_id": "casualty_id",
        "area": "lsoa_code",
        "occurred_at": "call_time",
        "age": "age_years",
        "harm": "severity",
        "category": "incident_type",
    },
    "council": {
        "person_id": "resident_ref",
        "area": "lsoa",
        "occurred_at": "logged_at",
        "age": "age",
        "harm": "risk_rating",
        "category": "report_type",
    },
}
_CATEGORIES = {
    "police": ["violence", "robbery", "burglary", "criminal_damage", "public_order"],
    "fire": ["deliberate_fire", "accidental_fire", "rtc", "special_service"],
    "council": ["asb", "noise", "fly_tipping", "housing"],
}
_SHARE = {"police": 0.5, "fire": 0.2, "council": 0.3}
# Hour-of-day profile: a trough in the morning, a peak around midnight.
_HOUR_WEIGHTS = np.array(
    [9, 8, 7, 5, 3, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 6, 6, 7, 8, 9, 10, 10], dtype=float
)


def area_deprivation(seed: int = 7) -> pd.Series:
    """Latent deprivation in [0, 1] per area (seeded; the same for every partner)."""
    areas = load_keyset(KEYSET)
    rng = np.random.default_rng(seed)
    return pd.Series(rng.beta(2.0, 2.0, len(areas)), index=pd.Index(areas, name="area"))


@dataclass(frozen=True)
class PartnerData:
    incidents: pd.DataFrame
    households: pd.DataFrame | None


def generate_partner(partner: str, rows: int, seed: int = 7) -> PartnerData:
    """One partner's incidents (logical column names); the council also gets households."""
    deprivation = area_deprivation(seed)
    rng = np.random.default_rng([seed, PARTNERS.index(partner)])
    rate = np.exp(1.5 * deprivation.to_numpy())
    area_idx = rng.choice(len(rate), size=rows, p=rate / rate.sum())
    hours = rng.choice(24, size=rows, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    days = rng.integers(0, 365, size=rows)
    minutes = rng.integers(0, 60, size=rows)
    occurred = np.datetime64("2025-01-01T00:00") + (days * 1440 + hours * 60 + minutes).astype(
        "timedelta64[m]"
    )
    people = max(rows // 2, 1)
    # repeat victims: a heavy-tailed number of incidents per person
    person = np.minimum(rng.zipf(1.6, size=rows) - 1, people - 1)
    person = (person * 7919 + rng.integers(0, people, size=rows)) % people
    age = np.clip(rng.normal(34, 15, size=rows), 0, 99).round().astype(np.int64)
    harm = (
        np.clip(rng.normal(20 + 40 * deprivation.to_numpy()[area_idx], 15), 0, 100).round().astype(np.int64)
    )
    categories = _CATEGORIES[partner]
    frame = pd.DataFrame(
        {
            "person_id": person.astype(np.int64),
            "area": np.asarray(deprivation.index)[area_idx],
            "occurred_at": occurred,
            "age": age,
            "harm": harm,
            "category": np.asarray(categories)[rng.integers(0, len(categories), size=rows)],
        }
    )
    households = None
    if partner == "council":
        n = max(rows // 4, len(rate))
        h_area = rng.integers(0, len(rate), size=n)
        households = pd.DataFrame(
            {
                "household_id": np.arange(n, dtype=np.int64),
                "area": np.asarray(deprivation.index)[h_area],
                "deprivation_score": np.clip(rng.normal(100 * deprivation.to_numpy()[h_area], 8), 0, 100)
                .round()
                .astype(np.int64),
                "members": rng.integers(1, 6, size=n).astype(np.int64),
            }
        )
    return PartnerData(frame, households)


def _write_data(data: Path, kind: str, rows: int, seed: int, stream: int) -> None:
    """`kind`'s synthetic files in `data/`, drawn from `stream`; kept when a marker says they
    were written for the same rows and seed."""
    marker = data / f".rows-{rows}-seed-{seed}"
    if marker.exists():
        return
    generated = generate_partner(kind, rows, stream)
    generated.incidents.rename(columns=_SOURCE_NAMES[kind]).to_parquet(
        data / "incidents.parquet", index=False
    )
    if generated.households is not None:
        generated.households.to_parquet(data / "households.parquet", index=False)
    for old in data.glob(".rows-*"):
        old.unlink()
    marker.touch()


#: How each partner names the residents it knows and their area (linkage, issue 17).
_RESIDENT_SOURCES = {
    "police": ("nominal_ref", "home_lsoa"),
    "fire": ("occupier_ref", "lsoa_code"),
    "council": ("client_ref", "lsoa"),
}


def _write_residents(data: Path, partner: str, rows: int, seed: int) -> None:
    """The residents `partner` knows (`residents.parquet`): one draw of families known to the
    three partners with known overlaps (`residents.multi_agency_residents`), the same for all
    three partners of one federation (same rows and seed), each writing identifiers its own way."""
    marker = data / f".residents-{rows}-seed-{seed}"
    if marker.exists():
        return
    world = federation_residents(rows, seed)
    ident, area = _RESIDENT_SOURCES[partner]
    held = world.holdings[partner].rename(columns={"resident_id": ident, "area": area})
    held.to_parquet(data / "residents.parquet", index=False)
    for old in data.glob(".residents-*"):
        old.unlink()
    marker.touch()


@functools.lru_cache(maxsize=4)
def federation_residents(rows: int, seed: int) -> MultiAgency:
    """The residents behind a federation of `rows` and `seed`: its partners' holdings, and the
    true overlaps the tests check the DP counts against."""
    return multi_agency_residents(PARTNERS, list(load_keyset(KEYSET)), max(rows // 4, 300), seed=seed + 1000)


def _linkage_key(root: Path) -> str:
    """The federation's linkage key (hex), made once under `root` and shared by its partners:
    what a partnership agrees out of band. The coordinator's folder never holds it."""
    path = root / "linkage.key"
    if not path.exists():
        new_linkage_key(path)
    return path.read_text().strip()


def _node_yaml(partner: str, coordinator: str | None, poll: float, tls: bool) -> str:
    names = _SOURCE_NAMES[partner]
    col_types = {
        "person_id": "int",
        "area": "str",
        "occurred_at": "datetime",
        "age": "int",
        "harm": "int",
        "category": "str",
    }
    columns = "\n".join(
        f"      {logical}: {{source: {names[logical]}, type: {ctype}}}"
        for logical, ctype in col_types.items()
    )
    ident, home = _RESIDENT_SOURCES[partner]
    residents = f"""
  residents:
    path: residents.parquet
    identifier: resident_id
    columns:
      resident_id: {{source: {ident}, type: str}}
      area: {{source: {home}, type: str}}"""
    households = ""
    allowed = "[incidents, residents]"
    caps = "{incidents: 5.0, residents: 5.0}"
    if partner == "council":
        households = """
  households:
    path: households.parquet
    identifier: household_id
    columns:
      household_id: {type: int}
      area: {type: str}
      deprivation_score: {type: int}
      members: {type: int}"""
        allowed = "[incidents, residents, households]"
        caps = "{incidents: 5.0, residents: 5.0, households: 5.0}"
    coordinator_line = f"coordinator: {coordinator}\n" if coordinator else ""
    if tls:
        coordinator_line += "transport: {ca_cert: keys/ca.crt, node_key: keys/node.key}\n"
    return f"""\
# node.yaml for the {partner} partner of the embedded demo federation.
version: 1
partner: {partner}
data_dir: data
state_dir: state
{coordinator_line}poll_interval: {poll}
linkage: {{key_file: keys/linkage.key}}
datasets:
  incidents:
    path: incidents.parquet
    identifier: person_id
    columns:
{columns}{residents}{households}
policy:
  allowed_datasets: {allowed}
  allowed_analyses: ["*"]
  max_rho_per_analysis: 1.0
  total_rho_cap: {caps}
  min_cell: 5
"""


def write_federation(
    root: Path,
    rows: int,
    seed: int = 7,
    coordinator: str | None = None,
    poll: float = 0.05,
    manual: frozenset[str] = frozenset(),
    ca_cert: Path | None = None,
) -> dict[str, Path]:
    """Write each partner's data, node key pair and node.yaml under `root/PARTNER/`; return the
    config paths. With `ca_cert`, each partner trusts that CA (copied to `keys/ca.crt`).

    Partners in `manual` approve each request by hand (`oda-node approve`).
    """
    configs = {}
    for partner in PARTNERS:
        folder = root / partner
        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        _write_data(data, partner, max(int(rows * _SHARE[partner]), 100), seed, seed)
        _write_residents(data, partner, rows, seed)
        keys = folder / "keys"
        if not (keys / "node.key").exists():
            write_key_pair(keys)
        linkage = keys / "linkage.key"
        if not linkage.exists():
            write_secret(linkage, (_linkage_key(root) + "\n").encode())
        if ca_cert is not None:
            shutil.copyfile(ca_cert, keys / "ca.crt")
        config = folder / "node.yaml"
        text = _node_yaml(partner, coordinator, poll, tls=ca_cert is not None)
        if partner in manual:
            text += "  approval: manual\n"
        config.write_text(text)
        configs[partner] = config
    return configs


def write_many(
    root: Path,
    partners: int,
    rows: int,
    coordinator: str | None = None,
    ca_cert: Path | None = None,
    poll: float = 0.05,
) -> dict[str, Path]:
    """`partners` synthetic partners (police, fire, council, police-2, fire-2, ...): the three
    kinds repeated, each set from its own seed, for scale tests and benches."""
    configs: dict[str, Path] = {}
    for index in range((partners + len(PARTNERS) - 1) // len(PARTNERS)):
        written = write_federation(
            root / f"set-{index + 1}", rows, 7 + index, coordinator, poll, ca_cert=ca_cert
        )
        for partner, path in written.items():
            if len(configs) == partners:
                break
            name = partner if index == 0 else f"{partner}-{index + 1}"
            if name != partner:
                path.write_text(path.read_text().replace(f"partner: {partner}\n", f"partner: {name}\n", 1))
            configs[name] = path
    return configs


def write_virtual_partner(root: Path, index: int, name: str, rows: int, seed: int = 7) -> Path:
    """One simulated partner's folder `root/name/` (data and node.yaml, no keys: it never
    connects anywhere), shaped like the demo partner it cycles through (police, fire, council);
    kept when already written for the same rows and seed. Returns its node.yaml."""
    kind = PARTNERS[index % len(PARTNERS)]
    folder = root / name
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    _write_data(data, kind, rows, seed, seed * 1_000_003 + index)
    config = folder / "node.yaml"
    config.write_text(
        _node_yaml(kind, None, 0.05, tls=False).replace(f"partner: {kind}\n", f"partner: {name}\n")
    )
    return config
