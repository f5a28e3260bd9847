"""OpenDP's core, without `opendp.prelude`'s extras (see `privacy._opendp`); import that module,
which sets the feature flags, not this one."""

from __future__ import annotations

from opendp import combinators as c
from opendp import measurements as m
from opendp.domains import atom_domain, vector_domain
from opendp.measures import zero_concentrated_divergence
from opendp.metrics import absolute_distance, l2_distance
from opendp.mod import Measurement, enable_features
from opendp.typing import i64

__all__ = [
    "Measurement",
    "absolute_distance",
    "atom_domain",
    "c",
    "enable_features",
    "i64",
    "l2_distance",
    "m",
    "vector_domain",
    "zero_concentrated_divergence",
]
