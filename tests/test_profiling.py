"""ganops.profiling.peak_memory_bytes counts the tensor memory a function holds at its peak."""

import torch

from ganops.profiling import peak_memory_bytes


def test_counts_live_storages_and_forgets_freed_ones():
    def allocate():
        kept = torch.empty(1000, dtype=torch.float32)
        temporary = torch.empty(500, dtype=torch.float32)
        del temporary
        torch.empty(200, dtype=torch.float32)
        return kept

    assert peak_memory_bytes(allocate) == 4000 + 2000


def test_views_share_their_storage():
    def allocate_views():
        base = torch.zeros(256, dtype=torch.float64)
        return base.view(16, 16), base[::2], base.view(16, 16).t()

    assert peak_memory_bytes(allocate_views) == 256 * 8


def test_tensors_from_before_the_call_are_not_counted():
    existing = torch.randn(10_000)
    assert peak_memory_bytes(lambda: existing.view(100, 100)) == 0


def test_counts_what_autograd_saves_for_backward():
    weight = torch.randn(64, 64, requires_grad=True)

    def forward_and_backward():
        activations = (weight @ weight).tanh()
        activations.sum().backward()

    peak = peak_memory_bytes(forward_and_backward)
    assert peak >= 2 * 64 * 64 * 4, peak


def test_materialised_attention_matrix_grows_quadratically():
    def attention_with_full_matrix(n: int):
        q = torch.randn(1, n, 8)
        return lambda: (q @ q.transpose(1, 2)).softmax(-1) @ q

    small, large = (peak_memory_bytes(attention_with_full_matrix(n)) for n in (64, 256))
    assert large >= 12 * small, (small, large)
