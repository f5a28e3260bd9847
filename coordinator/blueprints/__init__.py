"""Blueprints at the coordinator: running one (analyses, derived outputs, report, exports and
provenance), the signed registry other offices pull from, and the `oda blueprint` commands."""
