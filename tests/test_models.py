import math

import pytest
import torch
from helpers.configs import compose_config
from hydra.utils import instantiate

from src.models import CNN1d, MLP
from src.build import build_optimizer

BLOG = dict(hidden=[512, 256, 256, 128, 256, 256, 512], dropout=0.25, dropout_after=[0, 2, 5, 6])


def test_mlp_is_the_blog_bottleneck():
    model = MLP((40,), 10, **BLOG, init="torch")
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 256, 256, 128, 256, 256, 512, 10]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 4
    assert model(torch.randn(5, 40)).shape == (5, 10)


def test_cnn1d_flat_and_channel_inputs():
    assert CNN1d((40,), 10, channels=[8, 8, 8], kernel_size=5, batch_norm=False)(torch.randn(3, 40)).shape == (3, 10)
    assert CNN1d((2, 33), 4, channels=[8, 8], kernel_size=3, batch_norm=True)(torch.randn(3, 2, 33)).shape == (3, 4)


def test_cnn1d_ghost_batch_norm_normalises_each_ghost_batch_apart():
    """+model.ghost_batch_size: each ghost batch of the forward pass is normalised with its own
    statistics, so a sample's output depends only on its ghost batch: a batch of 8 at ghost size 4
    gives each half what the half alone gives; plain batch norm mixes the halves."""
    from src.models import GhostBatchNorm1d

    torch.manual_seed(0)
    ghost = CNN1d((40,), 10, channels=[8, 8], kernel_size=3, batch_norm=True, ghost_batch_size=4).train()
    assert {type(m) for m in ghost.modules() if isinstance(m, torch.nn.BatchNorm1d)} == {GhostBatchNorm1d}
    plain = CNN1d((40,), 10, channels=[8, 8], kernel_size=3, batch_norm=True).train()
    plain.load_state_dict(ghost.state_dict())
    x = torch.randn(8, 40) * 3 + 1
    assert torch.allclose(ghost(x), torch.cat([plain(x[:4]), plain(x[4:])]), atol=1e-5)
    assert not torch.allclose(plain(x), torch.cat([plain(x[:4]), plain(x[4:])]), atol=1e-3)
    with pytest.raises(ValueError, match="ghost_batch_size=4 needs batch_norm=true"):
        CNN1d((40,), 10, channels=[8], kernel_size=3, batch_norm=False, ghost_batch_size=4)


def linear_layers(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_mlp_keras_init_is_glorot_uniform_with_zero_biases():
    torch.manual_seed(0)
    for layer in linear_layers(MLP((54,), 7, **BLOG, init="keras")):
        fan_out, fan_in = layer.weight.shape
        limit = math.sqrt(6 / (fan_in + fan_out))  # Keras' glorot_uniform
        weights = layer.weight.detach().flatten()
        assert weights.abs().max() <= limit and weights.abs().max() > 0.9 * limit
        # uniform on [-limit, limit]: standard deviation limit / sqrt(3); >= 903 weights per layer
        assert weights.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)
        assert not layer.bias.any()
    # PyTorch's default is another init: uniform +-1/sqrt(fan_in), biases too
    for layer in linear_layers(MLP((54,), 7, **BLOG, init="torch")):
        fan_in = layer.weight.shape[1]
        assert layer.weight.abs().max() <= 1 / math.sqrt(fan_in) and layer.bias.abs().max() > 0
    with pytest.raises(ValueError, match="init='he'"):
        MLP((54,), 7, **BLOG, init="he")


@pytest.mark.parametrize("preset, init, eps", [
    (None, "torch", 1e-8),  # the default study and the other presets: PyTorch's defaults
    ("smith2018_optimizers", "torch", 1e-8),
    ("blog_covtype", "keras", 1e-7),  # the blog demo is Keras code: Keras' defaults
    ("blog_covtype_quick", "keras", 1e-7),
])
def test_presets_build_the_init_and_adam_eps_they_say(preset, init, eps):
    # model=mlp and optimizer=adam on the command line win over a preset's own choices of group;
    # what the preset sets inside them (init, eps) still applies
    overrides = ["model=mlp", "optimizer=adam"] + ([f"experiment={preset}"] if preset else [])
    cfg = compose_config(*overrides)
    assert cfg.model.init == init
    torch.manual_seed(0)
    model = instantiate(cfg.model, input_shape=(54,), n_classes=7)
    assert (not any(layer.bias.any() for layer in linear_layers(model))) == (init == "keras")
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=1e-3)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["eps"] == eps
