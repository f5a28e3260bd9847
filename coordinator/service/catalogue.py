"""The blueprint catalogue as the service shows it: each blueprint's parameters, dataset
contracts, governance, outputs and privacy cost at its default parameters."""

from __future__ import annotations

from pathlib import Path

from analyses.blueprint import bundled_blueprints, load_bundled
from coordinator.service.submission import CostPreview, resolve_blueprint

__all__ = ["catalogue", "describe"]


def catalogue(registry: Path | None) -> list[dict[str, object]]:
    """Every blueprint a submission may name: the shipped catalogue, then the registry."""
    out: list[dict[str, object]] = []
    for name in bundled_blueprints():
        bp = load_bundled(name).blueprint
        out.append(
            {"ref": name, "name": name, "version": bp.version, "title": bp.title, "source": "catalogue"}
        )
    if registry is not None and registry.is_dir():
        from coordinator.blueprints.registry import LocalRegistry

        for e in LocalRegistry(registry).entries():
            out.append(
                {
                    "ref": f"{e.name}@{e.version}",
                    "name": e.name,
                    "version": e.version,
                    "title": e.title,
                    "source": f"registry, signed by {e.publisher} (key {e.key_id})",
                }
            )
    return out


def describe(ref: str, registry: Path | None) -> dict[str, object]:
    """Everything about one blueprint.

    Raises:
        SpecError: no such blueprint (SignatureError: it no longer verifies).
    """
    signed = resolve_blueprint(ref, registry)
    bp = signed.blueprint.blueprint
    rendered = bp.render({})
    return {
        "ref": ref,
        "name": bp.name,
        "version": bp.version,
        "title": bp.title,
        "summary": " ".join(bp.summary.split()),
        "sha256": signed.blueprint.sha256,
        "signer": signed.signer,
        "governance": bp.governance.model_dump(mode="json"),
        "parameters": {
            name: {**p.model_dump(mode="json"), "value": rendered.parameters[name]}
            for name, p in bp.parameters.items()
        },
        "datasets": {
            name: {
                "description": c.description,
                "identifier": c.identifier,
                "columns": {
                    col: cc.model_dump(mode="json", exclude={"example"}) for col, cc in c.columns.items()
                },
            }
            for name, c in bp.datasets.items()
        },
        "disclosure": bp.disclosure.model_dump(mode="json"),
        "outputs": [{"id": o.id, "kind": o.kind, "title": o.title} for o in bp.outputs],
        "cost": CostPreview(rendered.dataset_cost()).to_json(),
    }
