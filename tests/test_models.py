import torch

from src.models import CNN1d, MLP


def test_mlp_is_the_blog_bottleneck():
    model = MLP((40,), 10, hidden=[512, 256, 256, 128, 256, 256, 512], dropout=0.25, dropout_after=[0, 2, 5, 6])
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 256, 256, 128, 256, 256, 512, 10]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 4
    assert model(torch.randn(5, 40)).shape == (5, 10)


def test_cnn1d_flat_and_channel_inputs():
    assert CNN1d((40,), 10, channels=[8, 8, 8], kernel_size=5)(torch.randn(3, 40)).shape == (3, 10)
    assert CNN1d((2, 33), 4, channels=[8, 8], kernel_size=3)(torch.randn(3, 2, 33)).shape == (3, 4)
