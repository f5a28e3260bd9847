"""node_agent/: config validation, connectors, the ledger, exit codes."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest

from node_agent.config import load_node_config
from node_agent.connectors import load_dataset, resolve_inside
from node_agent.ledger import Ledger
from privacy import BudgetExhausted, ConfigError, DataError, Rho
from privacy.exit_codes import EXIT_HELP, ExitCode

NODE = """\
version: 1
partner: police
data_dir: data
datasets:
  incidents:
    path: incidents.csv
    identifier: pid
    columns:
      pid: {type: int}
      area: {source: lsoa, type: str}
policy:
  allowed_datasets: [incidents]
  allowed_analyses: ["*"]
  max_rho_per_analysis: 1.0
  total_rho_cap: {incidents: 2.0}
"""

BAD_CONFIGS = [
    (
        "unknown key",
        NODE.replace("partner: police", "partner: police\nfirewall: off"),
        "firewall: unknown field",
    ),
    ("no policy", NODE.split("policy:")[0], "policy: Field required"),
    ("uncapped population", NODE.replace("{incidents: 2.0}", "{other: 2.0}"), "has no policy.total_rho_cap"),
    (
        "allowed but undeclared",
        NODE.replace("[incidents]", "[incidents, health]"),
        "names 'health', which is not under datasets",
    ),
    (
        "identifier undeclared",
        NODE.replace("identifier: pid", "identifier: nhs_number"),
        "identifier 'nhs_number' is not one of the declared columns",
    ),
    (
        "bad column type",
        NODE.replace("{type: int}", "{type: blob}"),
        r"datasets\.incidents\.columns\.pid\.type: Input should be",
    ),
    ("zero cap", NODE.replace("{incidents: 2.0}", "{incidents: 0}"), "must be in \\(0, 100\\]"),
    ("broken yaml", NODE + "  - : [\n", "not valid YAML"),
    ("python tag", "!!python/name:os.system\n", "not valid YAML"),
]


@pytest.mark.parametrize(("label", "text", "message"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_node_config_is_refused_with_its_message(
    tmp_path: Path, label: str, text: str, message: str
) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_node_config(path)


def test_missing_config_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_node_config(tmp_path / "absent.yaml")


def test_dataset_path_outside_data_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with pytest.raises(DataError, match="is outside the data folder"):
        resolve_inside(tmp_path / "data", "../secret.csv")


def test_connector_maps_and_types_columns(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    pd.DataFrame({"pid": [1, 2], "lsoa": ["E1", "E2"], "extra": [0, 0]}).to_csv(
        tmp_path / "data" / "incidents.csv", index=False
    )
    (tmp_path / "node.yaml").write_text(NODE)
    config = load_node_config(tmp_path / "node.yaml")
    frame = load_dataset(Path(config.data_dir), "incidents", config.datasets["incidents"]).frame
    assert list(frame.columns) == ["pid", "area"]
    assert str(frame["pid"].dtype) == "Int64"


def test_connector_names_a_column_missing_from_the_source(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    pd.DataFrame({"pid": [1]}).to_csv(tmp_path / "data" / "incidents.csv", index=False)
    (tmp_path / "node.yaml").write_text(NODE)
    config = load_node_config(tmp_path / "node.yaml")
    with pytest.raises(DataError, match="lsoa"):
        load_dataset(Path(config.data_dir), "incidents", config.datasets["incidents"])


def test_ledger_over_budget_refuses_with_requested_remaining_and_difference(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.reserve(request_id="a", costs={"p": Rho(0.7)}, caps={"p": Rho(1.0)}, spec_hash="h")
    with pytest.raises(BudgetExhausted, match=r"requested rho 0.5 .*remaining rho 0.3 .*short by rho 0.2"):
        ledger.reserve(request_id="b", costs={"p": Rho(0.5)}, caps={"p": Rho(1.0)}, spec_hash="h")
    assert ledger.spent("p").value == pytest.approx(0.7)


def test_ledger_survives_restart_and_pending_counts_as_spent(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    committed = ledger.reserve(request_id="a", costs={"p": Rho(0.2)}, caps={"p": Rho(1.0)}, spec_hash="h")
    ledger.commit(committed[0])
    ledger.reserve(
        request_id="b", costs={"p": Rho(0.3)}, caps={"p": Rho(1.0)}, spec_hash="h"
    )  # never committed
    ledger.close()
    reopened = Ledger(tmp_path / "l.sqlite")
    assert reopened.spent("p").value == pytest.approx(0.5)
    assert [e.status for e in reopened.entries()] == ["committed", "pending"]


def test_ledger_failed_release_is_not_refunded(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    entry = ledger.reserve(request_id="a", costs={"p": Rho(0.4)}, caps={"p": Rho(1.0)}, spec_hash="h")
    ledger.fail(entry[0])
    assert ledger.spent("p").value == pytest.approx(0.4)


def test_ledger_multi_population_reservation_is_all_or_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    with pytest.raises(BudgetExhausted):
        ledger.reserve(
            request_id="a",
            costs={"p": Rho(0.1), "q": Rho(5.0)},
            caps={"p": Rho(1.0), "q": Rho(1.0)},
            spec_hash="h",
        )
    assert ledger.spent("p").value == 0


def test_concurrent_reservations_cannot_overspend(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    outcomes: list[str] = []

    def attempt(i: int) -> None:
        ledger = Ledger(path)
        try:
            ledger.reserve(request_id=f"c{i}", costs={"p": Rho(0.3)}, caps={"p": Rho(1.0)}, spec_hash="h")
            outcomes.append("ok")
        except BudgetExhausted:
            outcomes.append("refused")
        finally:
            ledger.close()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 3
    assert Ledger(path).spent("p").value == pytest.approx(0.9)


def test_corrupted_ledger_is_named_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DataError, match=r"privacy ledger .*l\.sqlite is unreadable"):
        Ledger(path)


def test_every_exit_code_has_help_text() -> None:
    assert set(EXIT_HELP) == set(ExitCode)
    assert all(text.strip() for text in EXIT_HELP.values())


def test_example_node_config_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "configs" / "nodes" / "example-node.yaml"
    config = load_node_config(path)
    assert config.population_of("incidents") == "residents"


def test_published_json_schemas_are_up_to_date() -> None:
    import json

    from coordinator.embedded.documents import schema_models

    folder = Path(__file__).resolve().parents[2] / "configs" / "schema"
    for name, model in schema_models():
        on_disk = json.loads((folder / name).read_text())
        assert on_disk == json.loads(json.dumps(model.model_json_schema())), (
            f"run `oda schema` to refresh {name}"
        )
