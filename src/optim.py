"""SGD momentum without the buffer's warm-up: the ablation's direct test of the paper's
explanation of why a higher momentum costs accuracy (conf/optimizer/momentum_debiased.yaml).

torch.optim.SGD (like TensorFlow's MomentumOptimizer, the paper's) keeps a buffer
b <- m b + d (d the mean gradient, weight decay included; b starts at the first d) and steps by
lr * b. b weighs the gradients so far by a total of w <- m w + 1 (w = 1 at the first step), which
reaches its steady 1 / (1 - m) only after ~1 / (1 - m) updates: until then the step is smaller
than lr / (1 - m) times the gradient, the effective learning rate that the noise scale
g = lr / (1 - m) (N / B - 1) assumes. That is the warm-up the paper blames: ~B / (N (1 - m))
epochs (at m 0.98, B 1,275, N 20,000: 50 updates, 3.2 of 20 epochs), again after each change of
m. This optimizer divides each step's lr by (1 - m) w, as Adam corrects its first moment's bias,
so that every step is lr / (1 - m) times a weighted mean of the gradients so far: the same g from
the first update, nothing else changed. A change of B needs no correction: b is in units of the
mean gradient, whatever B. An lr change acts at once in either optimizer.
"""

from __future__ import annotations

import torch

BUFFER_WEIGHT = "buffer_weight"  # per param group, w above: in its state_dict, so a resumed run goes on alike


class DebiasedMomentumSGD(torch.optim.SGD):
    """torch.optim.SGD with heavy-ball momentum (no Nesterov, no dampening: what the bias
    correction above assumes, so they are not arguments), each step's lr divided by (1 - m) w.
    Every parameter of a group steps at every step, as in this project's training loop."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.defaults[BUFFER_WEIGHT] = 0.0
        for group in self.param_groups:
            group.setdefault(BUFFER_WEIGHT, 0.0)

    @torch.no_grad()
    def step(self, closure=None):
        scheduled = [group["lr"] for group in self.param_groups]  # the schedule's, put back after the step
        for group in self.param_groups:
            momentum = group["momentum"]  # the epoch's, set by src.build.apply_plan
            group[BUFFER_WEIGHT] = momentum * group[BUFFER_WEIGHT] + 1.0
            group["lr"] = group["lr"] / ((1.0 - momentum) * group[BUFFER_WEIGHT])
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, scheduled):
                group["lr"] = lr
