"""WideResNet and ghost batch norm on CPU at small batches."""

import pytest
import torch
import torch.nn.functional as F
from helpers.configs import compose_config
from hydra.utils import instantiate
from torch import nn

from src.models import GhostBatchNorm2d, WideResNet


def trained_pair(ghost_batch_size: int, channels: int = 3) -> tuple[GhostBatchNorm2d, nn.BatchNorm2d]:
    """A ghost BN and a plain BN with the same (non-trivial) affine parameters."""
    ghost, plain = GhostBatchNorm2d(channels, ghost_batch_size), nn.BatchNorm2d(channels)
    with torch.no_grad():
        for module in (ghost, plain):
            module.weight.copy_(torch.tensor([0.5, 2.0, -1.0][:channels]))
            module.bias.copy_(torch.tensor([0.1, -0.3, 1.0][:channels]))
    return ghost, plain


def batch(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shift = torch.tensor([0.0, 3.0, -2.0])[None, :, None, None]  # channels with other means
    return torch.randn(n, 3, 4, 5, generator=generator) * 2 + shift


@pytest.mark.parametrize("ghost_batch_size", [8, 100])
def test_ghost_bn_is_plain_bn_when_ghost_covers_the_batch(ghost_batch_size):
    ghost, plain = trained_pair(ghost_batch_size)
    for step in range(3):
        x = batch(8, seed=step)
        assert torch.allclose(ghost(x), plain(x), atol=1e-6)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(ghost, name), getattr(plain, name)), name


@pytest.mark.parametrize("n", [12, 10])  # 3 ghost batches of 4; or 4, 4 and a last one of 2
def test_ghost_bn_normalises_each_ghost_batch_with_its_own_statistics(n):
    ghost, plain = trained_pair(ghost_batch_size=4)
    x = batch(n).requires_grad_()
    x_plain = x.detach().clone().requires_grad_()
    out = ghost(x)
    chunks = x_plain.split(4)
    expected = torch.cat([plain(chunk) for chunk in chunks])
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, F.batch_norm(x, None, None, ghost.weight, ghost.bias, True), atol=1e-2)
    # gradients flow through each ghost batch's statistics as through plain BN's
    (out * torch.arange(out.numel()).view_as(out)).sum().backward()
    (expected * torch.arange(out.numel()).view_as(out)).sum().backward()
    assert torch.allclose(x.grad, x_plain.grad, atol=1e-4)
    # one running-stat update (momentum 0.1 from 0 and 1) towards the chunks' mean statistics
    means = torch.stack([c.detach().mean(dim=(0, 2, 3)) for c in chunks]).mean(0)
    variances = torch.stack([c.detach().var(dim=(0, 2, 3), correction=1) for c in chunks]).mean(0)
    assert torch.allclose(ghost.running_mean, 0.1 * means, atol=1e-6)
    assert torch.allclose(ghost.running_var, 0.9 + 0.1 * variances, atol=1e-6)
    assert ghost.num_batches_tracked == 1


def test_running_statistics_take_one_update_per_micro_batch():
    """What the GhostBatchNorm2d docstring says: one running-statistics update per forward call,
    so a batch of 24 that train_epoch splits into micro-batches of 8 makes 3 updates for its one
    parameter update (after the micro-batch's ghost batches of 4: the same chunks as unsplit)."""
    from src.batching import BatchStream
    from src.data import Dataset
    from src.step import Learner, Precision, StepSettings, train_epoch

    torch.manual_seed(0)
    data = Dataset(torch.randn(48, 3, 8, 8), torch.randint(0, 10, (48,)), torch.randn(4, 3, 8, 8),
                   torch.randint(0, 10, (4,)), torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)), n_classes=10,
                   name="random", source="memory")
    precision = Precision(torch.device("cpu"), bf16=False, channels_last=False)
    for micro_batch_size, calls_per_batch in ((None, 1), (8, 3)):
        model = WideResNet((3, 8, 8), 10, depth=10, width=1, ghost_batch_size=4, dropout=0.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        settings = StepSettings(micro_batch_size=micro_batch_size, precision=precision)
        learner = Learner(model, optimizer, data, BatchStream("carry"), torch.Generator(), settings, noise=None)
        _, updates, _ = train_epoch(learner, torch.arange(48), batch_size=24)
        tracked = {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, GhostBatchNorm2d)}
        assert updates == 2 and tracked == {updates * calls_per_batch}


def test_ghost_bn_eval_uses_running_statistics():
    ghost, _ = trained_pair(ghost_batch_size=4)
    for step in range(5):
        ghost(batch(12, seed=step))
    ghost.eval()
    x = batch(6, seed=9)
    expected = (x - ghost.running_mean[:, None, None]) / torch.sqrt(ghost.running_var[:, None, None] + ghost.eps)
    expected = expected * ghost.weight[:, None, None] + ghost.bias[:, None, None]
    assert torch.allclose(ghost(x), expected, atol=1e-5)
    assert torch.allclose(ghost(x[:1]), expected[:1], atol=1e-5)  # each sample on its own


def test_small_wrn_trains_on_cpu_with_ghost_batches():
    torch.manual_seed(0)
    model = WideResNet((3, 16, 16), 10, depth=10, width=1, ghost_batch_size=2, dropout=0.3)
    x, y = torch.randn(6, 3, 16, 16), torch.arange(6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it learns: 6 samples are memorised within a few steps
    model.eval()
    assert model(x).shape == (6, 10)


def test_wrn_16_4_is_the_papers_model():
    model = instantiate(compose_config("model=wrn").model, input_shape=(3, 32, 32), n_classes=10)  # conf/model/wrn.yaml
    # Zagoruyko & Komodakis report 2.7M parameters for WRN-16-4
    assert 2.7e6 < sum(p.numel() for p in model.parameters()) < 2.8e6
    assert {m.ghost_batch_size for m in model.modules() if isinstance(m, GhostBatchNorm2d)} == {128}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 3 * 2 * 2  # the stem, then 3 stages of 2 blocks of 2 convs
    assert [c.out_channels for c in convs[1::4]] == [64, 128, 256]  # 16k, 32k, 64k at k = 4
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_wrn_depth_must_be_6n_plus_4():
    with pytest.raises(ValueError, match="6n"):
        WideResNet((3, 32, 32), 10, depth=12, width=4, ghost_batch_size=128, dropout=0.0)
