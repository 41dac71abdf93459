import pytest
import torch
from torch import nn

from fedmrn_mpi.models import build_model, global_state, masked_names
from fedmrn_mpi.algorithms import model_spec


def _masked_count(model: nn.Module) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in masked_names(model))


def test_cnn4_fashion_mnist_masked_weights_match_paper():
    model = build_model("cnn4", 1, 28, 10, seed=0)
    assert _masked_count(model) == 389_920
    assert masked_names(model) == ["features.0.weight", "features.4.weight", "features.8.weight",
                                   "features.12.weight", "classifier.weight"]
    # no biases anywhere in conv/linear layers
    assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cnn8_cifar10_masked_weights_match_paper():
    model = build_model("cnn8", 3, 32, 10, seed=0)
    assert _masked_count(model) == 1_181_536
    assert model.classifier.in_features == 1024
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 8


def test_init_is_normal_001_and_seeded():
    a = build_model("cnn8", 3, 32, 100, seed=5)
    b = build_model("cnn8", 3, 32, 100, seed=5)
    c = build_model("cnn8", 3, 32, 100, seed=6)
    w = a.features[3].weight
    assert abs(w.std().item() - 0.01) < 5e-4 and abs(w.mean().item()) < 5e-4
    assert torch.equal(w, b.features[3].weight) and not torch.equal(w, c.features[3].weight)


def test_spec_roles():
    model = build_model("cnn4", 1, 28, 10, seed=0)
    spec = model_spec(model)
    assert set(spec.masked) <= set(spec.params)
    assert all("running" in n for n in spec.buffers) and len(spec.buffers) == 8
    assert spec.num_masked == 389_920
    # unmasked: BN affine (2 x 480 channels) and running stats (2 x 480)
    assert spec.num_unmasked == 4 * (32 + 64 + 128 + 256)
    assert "features.1.num_batches_tracked" not in global_state(model)


def test_unknown_model_is_clear_error():
    import pytest
    with pytest.raises(ValueError, match="cnn4"):
        build_model("resnet", 1, 28, 10, seed=0)


def _plain_order(model: nn.Module) -> nn.Sequential:
    """The same layers in the textbook order conv-BN-ReLU-maxpool (ReLU before the pool)."""
    layers = list(model.features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return nn.Sequential(nn.Sequential(*layers), nn.Flatten(1), model.classifier)


@pytest.mark.parametrize("name,shape,dtype", [("cnn4", (1, 28), torch.float32), ("cnn8", (3, 32), torch.float32),
                                              ("cnn4", (1, 28), torch.float64), ("cnn4", (1, 28), torch.bfloat16)])
def test_relu_after_the_pool_gives_the_same_values_and_gradients_as_the_plain_order(name, shape, dtype):
    model = build_model(name, shape[0], shape[1], 10, seed=3).to(dtype)
    assert any(isinstance(a, nn.MaxPool2d) and isinstance(b, nn.ReLU)
               for a, b in zip(model.features, list(model.features)[1:]))
    plain = _plain_order(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, shape[0], shape[1], shape[1], generator=gen).to(dtype)
    x[:, :, :4, :4] = 0.0  # windows that are all zero after BN's shift do not matter; exact ties do
    outs, grads = [], []
    for net in (model, plain):
        for p in model.parameters():
            p.grad = None
        out = net(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
