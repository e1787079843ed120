"""Per-sample random streams: a sample's draws depend on (seed, its index, a stream id) only.

With a fixed model-call shape, this is what makes purification independent of
how rows are grouped, the shard layout and the actor count: the same sample gets
the same noise wherever it is processed.
"""

from __future__ import annotations

import numpy as np
import torch


def sample_generator(seed: int, index: int, stream: int, gen: torch.Generator | None = None) -> torch.Generator:
    """A CPU generator seeded from (seed, index, stream) via numpy's SeedSequence."""
    i = int(index)
    state = np.random.SeedSequence([int(seed), i & 0xFFFFFFFF, (i >> 32) & 0xFFFFFFFF, int(stream)]).generate_state(2)
    gen = gen or torch.Generator()
    return gen.manual_seed(int(state[0]) << 32 | int(state[1]))


def per_sample_randn(index: np.ndarray, seed: int, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) standard normals, row b drawn from sample ``index[b]``'s own stream."""
    out = torch.empty((len(index), *shape))
    gen = torch.Generator()
    for row, i in enumerate(np.asarray(index, dtype=np.int64)):
        out[row] = torch.randn(shape, generator=sample_generator(seed, int(i), stream, gen))
    return out
