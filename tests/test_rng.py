"""Per-sample noise streams: Philox4x32-10 on tensors against its published answers, and a sample's draws
depending on (seed, index, stream) only, whichever rows share the call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_ray.rng import KNOWN_ANSWERS as KAT
from eclipse_ray.rng import philox4x32, philox_randn


def test_the_known_answers_are_random123s():
    """The vectors as Random123 publishes them (kat_vectors, philox4x32_10), so that an edit shows here."""
    assert [f"{w:08x}" for *_, want in KAT for w in want] == [
        "6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8", "408f276d", "41c83b0e", "a20bc7c6", "6d5451fd",
        "d16cfe09", "94fdcceb", "5001e420", "24126ea1"]
    assert KAT[1][:2] == ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) and KAT[2][1] == (0xA4093822, 0x299F31D0)


@pytest.mark.parametrize("counter, key, want", KAT)
def test_philox_matches_the_published_answers(counter, key, want):
    got = philox4x32(tuple(torch.tensor([c]) for c in counter), key)
    assert tuple(int(w) for w in got) == want


def test_philox_is_elementwise_over_broadcast_counters():
    counters = [torch.tensor([k[0][i] for k in KAT[:1] + KAT[2:]]) for i in range(4)]  # two counters, one key
    got = philox4x32(tuple(counters), (0, 0))
    assert tuple(int(w[0]) for w in got) == KAT[0][2]
    alone = philox4x32(tuple(torch.tensor([c]) for c in KAT[2][0]), (0, 0))
    assert [int(w[1]) for w in got] == [int(w) for w in alone]


def test_a_samples_draws_depend_on_seed_index_and_stream_only():
    index = np.array([7, 3, 2 ** 40 + 3, 0])
    whole = philox_randn(index, 5, 1, (2, 3, 4))
    assert whole.shape == (4, 2, 3, 4) and whole.dtype == torch.float32
    for row, i in enumerate(index):  # alone, or among other rows in another order: the same values
        assert torch.equal(philox_randn(np.array([i]), 5, 1, (2, 3, 4))[0], whole[row])
    assert torch.equal(philox_randn(index[::-1], 5, 1, (2, 3, 4)).flip(0), whole)
    assert torch.equal(philox_randn(index, 5, 1, (24,)).reshape(whole.shape), whole)  # shape is a view
    assert torch.equal(philox_randn(index, 5, 1, (25,))[:, :24].reshape(whole.shape), whole)  # a prefix
    others = [philox_randn(index, 6, 1, (2, 3, 4)), philox_randn(index, 5, 2, (2, 3, 4)),
              philox_randn(index + 2 ** 32, 5, 1, (2, 3, 4))]  # seed, stream, the index's high word
    assert all((o - whole).abs().min() > 0 for o in others)


def test_philox_noise_is_standard_normal():
    from scipy import stats

    z = philox_randn(np.arange(40), 0, 0, (5000,)).flatten().double().numpy()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01 and np.abs(z).max() < 5.8
    assert stats.kstest(z, "norm").pvalue > 0.01
    pairs = z.reshape(-1, 2)  # Box–Muller's two outputs of one uniform pair are uncorrelated
    assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 0.01
    rows = philox_randn(np.arange(2000), 0, 0, (2,)).double().numpy()  # neighbouring indices too
    assert abs(np.corrcoef(rows[:-1, 0], rows[1:, 0])[0, 1]) < 0.06


def test_philox_pins_its_first_values():
    """The stream is part of every purified set made with ``defense.rng=philox``: it must never drift."""
    got = philox_randn(np.array([0, 12345]), 0, 0, (4,))
    want = torch.tensor([[0.991138, -0.924662, -0.617609, -0.482068], [1.210757, -0.231268, -0.462786, 0.235359]])
    # row 0 by hand from the first answer above: u = 0x6627E8D5 / 2³², v = 0xE169C58D / 2³²,
    # √(−2 ln u)·cos 2πv = 1.35554 · 0.73117 = 0.99114
    assert torch.allclose(got, want, atol=1e-5), got


def test_a_block_counter_overflow_is_refused():
    with pytest.raises(ValueError, match="32-bit block counter"):
        philox_randn(np.arange(1), 0, 0, (2 ** 34 + 4,), device="meta")


def test_drawing_in_passes_changes_no_value(monkeypatch):
    import eclipse_ray.rng as rng

    whole = philox_randn(np.arange(5), 3, 2, (7, 6))
    for chunk in (7, 15):  # 5 rows × 1 block per pass; 5 × 3, the last pass shorter (11 blocks)
        monkeypatch.setattr(rng, "_CHUNK_CPU", chunk)
        assert torch.equal(philox_randn(np.arange(5), 3, 2, (7, 6)), whole)
