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


# --- counter-based streams on any device -------------------------------------------------------
# Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the
# generator behind cuRAND and torch's CUDA RNG), written with int64 tensor ops so it runs where the
# model runs: a block of four uint32 outputs is a pure function of a 128-bit counter and a 64-bit
# key. Here the key is the seed and the counter is (block, stream, index), so a sample's draws
# depend on (seed, index, stream) only, as with :func:`per_sample_randn`, but with no host work and
# no per-sample loop: one batch's noise is a few hundred element-wise kernels per pass on the GPU.

# Random123's known-answer vectors for philox4x32_10 (its kat_vectors file): counter, key, output. The
# tests and the device checks (benchmarks/device_checks.py) hold the implementation to them.
KNOWN_ANSWERS = (((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
                 ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
                 ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
                  (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)))

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_MASK32 = 0xFFFFFFFF
_CHUNK = 1 << 22      # Philox blocks per pass of philox_randn on a GPU (≈ 34 MB per int64 temporary)
_CHUNK_CPU = 1 << 18  # on the CPU, where fixed_shape runs a call per thread (≈ 2 MB each)


def _mulhilo(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of m·x for uint32 values held in int64 (16-bit limbs: no overflow)."""
    p_lo, p_hi = x * (m & 0xFFFF), x * (m >> 16)          # each < 2^48
    lo = (p_lo + ((p_hi & 0xFFFF) << 16)) & _MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int], rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32-``rounds`` of four broadcastable int64 counter words (values < 2^32) under ``key``."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _MASK32 for c in counter)
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & _MASK32, (k1 + PHILOX_W[1]) & _MASK32
        hi0, lo0 = _mulhilo(PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_randn(index: np.ndarray, seed: int, stream: int, shape: tuple[int, ...],
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, *shape) standard normals on ``device``, row b a function of (seed, ``index[b]``, stream) only.

    Each Philox block (counter = block number, stream, index low and high words; key = seed)
    gives four uint32, mapped to 23-bit uniforms in (0, 1) and through Box–Muller to four
    normals (|z| ≤ 5.8). Integer arithmetic is exact everywhere, so the uniforms are
    bit-identical on every device; the normals can differ in the last ulp of log/sin/cos
    between CPU and CUDA.
    """
    n = int(np.prod(shape, dtype=np.int64))
    blocks = -(-n // 4)
    if blocks >= 2 ** 32:
        raise ValueError(f"philox_randn: {n} draws per sample exceed the 32-bit block counter")
    idx = torch.as_tensor(np.ascontiguousarray(index, dtype=np.int64), device=device)[:, None]
    out = torch.empty((len(idx), blocks, 4), dtype=torch.float32, device=device)
    limit = _CHUNK_CPU if idx.device.type == "cpu" else _CHUNK
    step = max(1, limit // max(len(idx), 1))  # blocks per pass: the integer temporaries stay small
    for first in range(0, blocks, step):
        block = torch.arange(first, min(first + step, blocks), dtype=torch.int64, device=device)[None, :]
        words = philox4x32((block, torch.full_like(block, int(stream)), idx, idx >> 32),
                           (int(seed), int(seed) >> 32))
        u = [((w >> 9).to(torch.float32) + 0.5) * 2.0 ** -23 for w in words]   # (0, 1), exact in fp32
        for lane, (a, b) in enumerate(((u[0], u[1]), (u[2], u[3]))):
            r, theta = torch.sqrt(-2.0 * torch.log(a)), (2.0 * np.pi) * b
            out[:, first:first + step, 2 * lane] = r * torch.cos(theta)
            out[:, first:first + step, 2 * lane + 1] = r * torch.sin(theta)
    return out.reshape(len(idx), blocks * 4)[:, :n].reshape(len(idx), *shape)
