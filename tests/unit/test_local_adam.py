"""The shared loop's Adam (for algorithms that ask for it, e.g. FedPM's scores) is torch's Adam."""

import torch

from fedmrn_mpi.training.local import _Adam


def test_foreach_adam_matches_torch_adam():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    b = [t.clone().requires_grad_(True) for t in a]
    ours, ref = _Adam([t.clone() for t in a], lr=0.1), torch.optim.Adam(b, lr=0.1)
    for _ in range(5):
        grads = [torch.randn(t.shape, generator=g) for t in a]
        ours.step(grads)
        for t, gr in zip(b, grads):
            t.grad = gr.clone()
        ref.step()
    for x, y in zip(ours.params, b):
        torch.testing.assert_close(x, y.detach(), rtol=1e-6, atol=1e-7)
