"""Tests for yolo_loss.train.optim: parameter groups, the learning-rate schedule, the weight EMA, gradient clipping."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from yolo_loss.checkpoint import load_checkpoint, save_checkpoint
from yolo_loss.config.schema import TrainConfig
from yolo_loss.train.optim import ModelEMA, build_optimizer, grad_norm_and_clip, lr_at, set_lr


class ConvBNConvBias(nn.Module):
    """conv (no bias) -> BN -> conv with bias. The names are chosen to defeat name heuristics: the BatchNorm is
    called ``proj`` and the biased convolution ``norm``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.proj = nn.BatchNorm2d(4)
        self.norm = nn.Conv2d(4, 5, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.conv(x)))


def test_build_optimizer_decays_only_conv_and_linear_weights() -> None:
    model = ConvBNConvBias()
    cfg = TrainConfig(lr=0.02, momentum=0.8, weight_decay=0.1)
    optimizer = build_optimizer(model, cfg)
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model.conv.weight), id(model.norm.weight)}
    assert {id(p) for p in not_decayed["params"]} == {id(model.proj.weight), id(model.proj.bias), id(model.norm.bias)}
    # 3*4*3*3 + 4*5 decayed elements; 4 + 4 BN scale/shift + 5 bias elements not decayed.
    assert sum(p.numel() for p in decayed["params"]) == 128
    assert sum(p.numel() for p in not_decayed["params"]) == 13
    for group in optimizer.param_groups:
        assert group["lr"] == 0.02 and group["momentum"] == 0.8 and group["nesterov"] is False


def test_weight_decay_acts_only_on_the_decayed_group() -> None:
    """With zero gradients one SGD step is the decay alone: w <- w - lr * wd * w = w * (1 - 0.5 * 0.1)."""
    model = ConvBNConvBias()
    with torch.no_grad():
        model.proj.weight.fill_(2.0)
        model.norm.bias.fill_(3.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, TrainConfig(lr=0.5, weight_decay=0.1))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(model.conv.weight, before["conv.weight"] * 0.95)
    torch.testing.assert_close(model.norm.weight, before["norm.weight"] * 0.95)
    assert torch.equal(model.proj.weight, before["proj.weight"])
    assert torch.equal(model.norm.bias, before["norm.bias"])


def test_build_optimizer_skips_frozen_and_refuses_unknown_parameters() -> None:
    model = ConvBNConvBias()
    model.conv.weight.requires_grad_(False)
    optimizer = build_optimizer(model, TrainConfig())
    assert sum(len(group["params"]) for group in optimizer.param_groups) == 4

    model.scale = nn.Parameter(torch.ones(1))  # owned by the top-level module, not a conv/linear/norm layer
    with pytest.raises(ValueError, match="'scale' belongs to a ConvBNConvBias"):
        build_optimizer(model, TrainConfig())


def test_lr_at_burn_in_and_cosine() -> None:
    """lr 0.1, burn-in 10, 110 steps: burn-in 0.1 * (s / 10)^4; then cosine from 0.1 to 0.001 over 100 steps,
    so step 60 (half way) is 0.001 + 0.099 * (1 + cos(pi / 2)) / 2 = 0.0505."""
    cfg = TrainConfig(lr=0.1, burn_in=10, schedule="cosine")
    expected = {0: 0.0, 5: 0.1 * 0.5**4, 9: 0.1 * 0.9**4, 10: 0.1, 60: 0.0505, 110: 0.001, 500: 0.001,
                35: 0.001 + 0.099 * (1 + math.cos(math.pi / 4)) / 2}
    for step, lr in expected.items():
        assert lr_at(step, 110, cfg) == pytest.approx(lr, rel=1e-12, abs=1e-15), step


def test_lr_at_step_schedule() -> None:
    """lr 0.1, burn-in 10, steps at 0.5 and 0.8 of 100, scale 0.1: 0.1 until step 49, 0.01 from step 50 (darknet
    scales at the listed iteration itself), 0.001 from step 80."""
    cfg = TrainConfig(lr=0.1, burn_in=10, schedule="step", steps=[0.5, 0.8], step_scale=0.1)
    expected = {5: 0.00625, 10: 0.1, 49: 0.1, 50: 0.01, 79: 0.01, 80: 0.001, 99: 0.001}
    for step, lr in expected.items():
        assert lr_at(step, 100, cfg) == pytest.approx(lr, rel=1e-12), step


def test_lr_at_without_burn_in_starts_at_the_base_rate() -> None:
    assert lr_at(0, 50, TrainConfig(lr=0.3, burn_in=0, schedule="cosine")) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="total_steps must be positive"):
        lr_at(0, 0, TrainConfig())


def test_set_lr_sets_every_group() -> None:
    optimizer = build_optimizer(ConvBNConvBias(), TrainConfig(lr=0.01))
    set_lr(optimizer, 0.123)
    assert [group["lr"] for group in optimizer.param_groups] == [0.123, 0.123]


def linear_bn(weight: float) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(weight)
    return model


def test_ema_matches_hand_computed_average() -> None:
    """decay 0.9, ramp d_n = 0.9 * (1 - exp(-n / 2000)); weights 1 (initial copy), then 3, then 5:
    e1 = d1 * 1 + (1 - d1) * 3; e2 = d2 * e1 + (1 - d2) * 5."""
    model = linear_bn(1.0)
    ema = ModelEMA(model, decay=0.9)
    d1, d2 = 0.9 * (1 - math.exp(-1 / 2000)), 0.9 * (1 - math.exp(-2 / 2000))
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.update(model)
    e1 = d1 * 1.0 + (1 - d1) * 3.0
    assert ema.module[0].weight.item() == pytest.approx(e1, rel=1e-6)
    with torch.no_grad():
        model[0].weight.fill_(5.0)
    ema.update(model)
    assert ema.updates == 2
    assert ema.module[0].weight.item() == pytest.approx(d2 * e1 + (1 - d2) * 5.0, rel=1e-6)


def test_ema_after_the_ramp_uses_the_full_decay() -> None:
    """After 10^6 updates exp(-500) vanishes: 0.9 * 1 + 0.1 * 3 = 1.2."""
    model = linear_bn(1.0)
    ema = ModelEMA(model, decay=0.9)
    ema.load_state_dict({"module": ema.module.state_dict(), "updates": 10**6})
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.update(model)
    assert ema.module[0].weight.item() == pytest.approx(1.2, rel=1e-6)


def test_ema_copies_integer_buffers_and_averages_running_stats() -> None:
    model = linear_bn(1.0)
    ema = ModelEMA(model, decay=0.9)
    ema.load_state_dict({"module": ema.module.state_dict(), "updates": 10**6})  # d = 0.9 exactly
    model.train()
    for _ in range(3):
        model(torch.tensor([[1.0], [3.0]]))  # batch mean 2; running_mean after 3 steps: 2 * (1 - 0.9^3)
    ema.update(model)
    assert ema.module[1].num_batches_tracked.item() == 3  # averaging would give int(0.9 * 0 + 0.1 * 3) = 0
    model_mean = 2.0 * (1 - 0.9**3)
    assert model[1].running_mean.item() == pytest.approx(model_mean, rel=1e-6)
    assert ema.module[1].running_mean.item() == pytest.approx(0.1 * model_mean, rel=1e-6)


def test_ema_module_is_a_frozen_eval_copy() -> None:
    model = linear_bn(1.0).train()
    ema = ModelEMA(model, decay=0.9)
    assert not ema.module.training and all(not p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model[0].weight.fill_(7.0)  # not seen until update()
    assert ema.module[0].weight.item() == 1.0


def test_ema_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    model = linear_bn(1.0)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.update(model)
    ema.update(model)
    save_checkpoint({"ema": ema.state_dict()}, tmp_path / "ema.pt")

    resumed = ModelEMA(linear_bn(0.0), decay=0.9)
    resumed.load_state_dict(load_checkpoint(tmp_path / "ema.pt")["ema"])
    assert resumed.updates == 2
    assert resumed.module[0].weight.item() == ema.module[0].weight.item()


def params_with_grads() -> list[nn.Parameter]:
    """Gradients [3, 4] and [12]: total norm sqrt(9 + 16 + 144) = 13; a third parameter has no gradient."""
    first, second, unused = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    first.grad, second.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
    return [first, second, unused]


def test_grad_norm_without_clipping() -> None:
    params = params_with_grads()
    assert grad_norm_and_clip(params, max_norm=0.0) == pytest.approx(13.0)
    assert params[0].grad.tolist() == [3.0, 4.0] and params[1].grad.tolist() == [12.0]
    assert grad_norm_and_clip(params, max_norm=100.0) == pytest.approx(13.0)  # below the limit: unchanged
    assert params[0].grad.tolist() == [3.0, 4.0]


def test_grad_norm_is_measured_before_clipping_and_gradients_are_scaled() -> None:
    """max_norm 6.5 = 13 / 2: every gradient is halved; the returned norm is still 13."""
    params = params_with_grads()
    assert grad_norm_and_clip(params, max_norm=6.5) == pytest.approx(13.0)
    torch.testing.assert_close(params[0].grad, torch.tensor([1.5, 2.0]))
    torch.testing.assert_close(params[1].grad, torch.tensor([6.0]))
    assert grad_norm_and_clip([nn.Parameter(torch.zeros(1))], max_norm=1.0) == 0.0  # no gradients at all
