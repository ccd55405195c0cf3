"""The grid (``train.search.strategy: grid``, the default): every combination one complete run, no stages."""
from __future__ import annotations

from meli.search.base import Strategy

GRID = Strategy()
