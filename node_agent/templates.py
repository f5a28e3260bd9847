"""The commented `node.yaml` that `oda-node init` writes."""

from __future__ import annotations

__all__ = ["node_yaml"]

_TEMPLATE = """\
# node.yaml: the one file partner IT writes. Paths are relative to this file.
# Check it with `oda-node check`; run the node with `oda-node start`.
version: 1
partner: {partner}                 # your organisation's short name
data_dir: data                     # every dataset path must stay inside this folder
state_dir: state                   # ledger, audit log and inbox live here: back them up
{coordinator_line}
transport:                         # outbound HTTPS to the coordinator; nothing listens here
  ca_cert: keys/ca.crt             # the coordinator's CA certificate, sent with your enrolment
  node_key: keys/node.key          # made by `oda-node init`; send keys/node.pub to the coordinator
poll_interval: 1.0                 # seconds between polls when idle
datasets:
  incidents:                       # the logical name analysts use
    path: incidents.csv            # CSV or Parquet inside data_dir (or use `sql:` below)
    # sql: {{url: "postgresql+psycopg://user@db.local/crime", table: incidents}}
    identifier: person_id          # the column that identifies a person; never published
    population: residents          # budget pool (default: the dataset name)
    columns:                       # logical name: {{source: column in your data, type, rules}}
      person_id: {{type: int, required: true}}
      area: {{source: lsoa11cd, type: str}}
      occurred_at: {{source: reported_at, type: datetime}}
      age: {{type: int, min: 0, max: 120}}
policy:                            # fail closed: anything not allowed here is refused
  allowed_datasets: [incidents]
  allowed_analyses: ["*"]          # analysis names (shell patterns); narrow this
  max_rho_per_analysis: 0.5        # largest cost one analysis may take
  total_rho_cap: {{residents: 5.0}}  # cap per population, per renewal period
  # renewal: {{every_days: 365, start: 2026-04-01}}
  min_cell: 10                     # smaller noisy counts are not published
  approval: manual                 # manual: requests wait for `oda-node approve ID`
# linkage: {{key_file: keys/linkage.key}}  # overlap steps only: the partnership's shared key
#                                   (`oda-node linkage-key FILE`; share it out of band, never
#                                   through the coordinator); without it overlaps are refused
"""


def node_yaml(partner: str, coordinator: str | None) -> str:
    line = (
        f"coordinator: {coordinator}        # the coordinator's Fleet address (outbound only)"
        if coordinator
        else "# coordinator: oda.example.org:9092  # the coordinator's Fleet address (outbound only)"
    )
    return _TEMPLATE.format(partner=partner, coordinator_line=line)
