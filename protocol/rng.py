"""Named random streams derived from (seed, purpose, ids...).

Every random decision of a run (client sampling, data order, device draws, dropout) draws
from its own stream keyed by what it is for and by the round / client it concerns. Nothing
depends on which worker runs a client or on what ran before it, so results are identical
for any worker count and after a resume.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _purpose_key(purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")


def seed_sequence(seed: int, purpose: str, *ids: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), _purpose_key(purpose), *[int(i) for i in ids]])


def rng(seed: int, purpose: str, *ids: int) -> np.random.Generator:
    """A numpy Generator for one purpose (and optional round/client ids)."""
    return np.random.default_rng(seed_sequence(seed, purpose, *ids))


def torch_generator(seed: int, purpose: str, *ids: int) -> torch.Generator:
    """A CPU torch.Generator for one purpose; used for model init and dropout."""
    g = torch.Generator()
    g.manual_seed(int(seed_sequence(seed, purpose, *ids).generate_state(1, np.uint64)[0] >> 1))
    return g
