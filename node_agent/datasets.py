"""The node's datasets as analyses read them: loaded once, kept warm, each with a snapshot.

A dataset is read from its source (file or database), typed, and cut to the rows that keep its
contract (`node_agent.connectors`). Each load gets a snapshot id drawn at random: releases carry
that id, never anything computed from the rows; the content hash stays in the node's audit log.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analyses.step import DatasetSchema
from node_agent.config import NodeConfig
from node_agent.connectors import LoadedDataset, content_hash, load_dataset, write_snapshot

__all__ = ["Datasets", "Snapshot"]

log = logging.getLogger("oda.node")


@dataclass(frozen=True)
class Snapshot:
    """One loaded copy of a dataset: the id releases carry, and what only the node keeps."""

    #: Random, drawn when the data were loaded: says nothing about the rows, only "the node
    #: loaded its data again" when it changes.
    id: str
    #: sha256 of the content analyses read (kept in the node's audit log, never sent).
    sha256: str
    rows: int
    #: Rows of the source left out because they break the contract.
    dropped: int

    def record(self) -> dict[str, object]:
        """What the audit log keeps about the data behind a release."""
        return {"snapshot": self.id, "sha256": self.sha256, "rows": self.rows}


class Datasets:
    """The datasets a node's config declares, loaded on first use (thread-safe)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._data: dict[str, LoadedDataset] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._lock = threading.Lock()

    def schemas(self) -> dict[str, DatasetSchema]:
        """Declared schemas of the datasets policy allows this node to analyse, cut down to the
        columns policy allows analyses to read."""
        allowed = self.config.policy.allowed_columns or {}
        return {
            name: {
                col: spec.type
                for col, spec in ds.columns.items()
                if name not in allowed or col in allowed[name]
            }
            for name, ds in self.config.datasets.items()
            if name in self.config.policy.allowed_datasets
        }

    def loaded(self, dataset: str) -> LoadedDataset:
        """The dataset as analyses see it (rows that keep the contract); a SQL source is kept as a
        local snapshot file.

        Raises:
            DataError: the source cannot be read (see `load_dataset`).
        """
        with self._lock:
            if dataset not in self._data:
                self._load(dataset)
            return self._data[dataset]

    def _load(self, dataset: str) -> None:
        config = self.config.datasets[dataset]
        data = load_dataset(Path(self.config.data_dir), dataset, config)
        if config.sql is not None:
            path, digest = write_snapshot(Path(self.config.state_dir), dataset, data.frame)
            log.info("snapshot of %s: %s (%d rows)", dataset, path, len(data.frame))
        else:
            digest = content_hash(data.frame)
        if data.dropped:
            broken = ", ".join(f"{rule}: {n:,}" for rule, n in data.rules if n)
            log.warning(
                "dataset %s: %d of %d rows break the contract and are left out of every analysis (%s); "
                "`oda-node check` shows the rules",
                dataset,
                data.dropped,
                data.source_rows,
                broken,
            )
        self._data[dataset] = data
        self._snapshots[dataset] = Snapshot(secrets.token_hex(8), digest, len(data.frame), data.dropped)

    def frame(self, dataset: str) -> pd.DataFrame:
        """The rows of `dataset` analyses read."""
        return self.loaded(dataset).frame

    def snapshot(self, dataset: str) -> Snapshot:
        """The loaded snapshot of `dataset` (its random id and, for the node only, its hash)."""
        self.loaded(dataset)
        return self._snapshots[dataset]

    def warm_up(self) -> None:
        """Load every allowed dataset now, so the first request does not pay for it."""
        for name in self.config.policy.allowed_datasets:
            self.loaded(name)
