"""Optimiser, learning-rate schedule, weight EMA and gradient clipping.

- :func:`build_optimizer`: SGD with momentum; weight decay on convolution and linear weights only.
- :func:`lr_at`: darknet's burn-in ``lr * (step / burn_in) ** 4``, then a cosine or a step schedule.
- :class:`ModelEMA`: an exponential moving average of the weights with ultralytics' warm-up ramp.
- :func:`grad_norm_and_clip`: the total gradient norm, clipped when asked.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from yolo_loss.config.schema import TrainConfig

# darknet's default `power` for burn-in (parser.c: `net->power = option_find_float_quiet(options, "power", 4)`).
BURN_IN_POWER = 4.0
# The cosine schedule ends at this fraction of the base learning rate rather than at 0 (ultralytics' lrf=0.01).
COSINE_FINAL_FRACTION = 0.01
# ModelEMA's warm-up: the effective decay reaches 63% of its value after this many updates (ultralytics' tau).
EMA_RAMP_UPDATES = 2000

# Modules whose weight is a linear map: decayed. Their bias, and every parameter of a normalisation layer
# (a scale and a shift, which decay would pull towards 0 and so distort the normalised activations), are not.
_DECAYED_WEIGHT_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                           nn.ConvTranspose3d, nn.Linear)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_NORM_MODULES = (*BATCH_NORMS, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD (momentum ``cfg.momentum``, no Nesterov, lr ``cfg.lr``) with two parameter groups: convolution and
    linear weights with ``cfg.weight_decay``, then all biases and normalisation-layer weights without decay.

    Parameters are sorted by the type of the module that owns them, not by their names. Frozen parameters
    (``requires_grad=False``) are left out.

    Raises:
        ValueError: a trainable parameter belongs to a module type this rule does not cover (a bare
            ``nn.Parameter``, say); it is named, so that the choice to decay it or not is made explicitly.
    """
    decayed: list[nn.Parameter] = []
    not_decayed: list[nn.Parameter] = []
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, _DECAYED_WEIGHT_MODULES) and param is module.weight:
                decayed.append(param)
            elif isinstance(module, _DECAYED_WEIGHT_MODULES + _NORM_MODULES):
                not_decayed.append(param)
            else:
                full_name = f"{module_name}.{param_name}" if module_name else param_name
                raise ValueError(f"parameter {full_name!r} belongs to a {type(module).__name__}, which "
                                 "build_optimizer does not know whether to weight-decay")
    return torch.optim.SGD([{"params": decayed, "weight_decay": cfg.weight_decay},
                            {"params": not_decayed, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=False)


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """The learning rate of iteration ``step`` (0-based) of ``total_steps``.

    - Burn-in, ``step < cfg.burn_in``: ``lr * (step / burn_in) ** 4`` (darknet's ``policy`` burn-in with its
      default ``power=4``; 0 at step 0).
    - ``cosine``: with ``t = (step - burn_in) / (total_steps - burn_in)`` clamped to ``[0, 1]``,
      ``lr_end + (lr - lr_end) * (1 + cos(pi * t)) / 2`` with ``lr_end = 0.01 * lr``: ``lr`` right after
      burn-in, ``0.01 * lr`` at ``step = total_steps``.
    - ``step``: ``lr * step_scale ** k``, ``k`` the number of ``cfg.steps`` fractions ``f`` with
      ``step >= f * total_steps`` (darknet's ``steps`` policy, which scales at the listed iteration itself).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < cfg.burn_in:
        return cfg.lr * (step / cfg.burn_in) ** BURN_IN_POWER
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.burn_in) / max(1, total_steps - cfg.burn_in))
        lr_end = COSINE_FINAL_FRACTION * cfg.lr
        return lr_end + (cfg.lr - lr_end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        passed = sum(1 for fraction in cfg.steps if step >= fraction * total_steps)
        return cfg.lr * cfg.step_scale ** passed
    raise ValueError(f"unknown schedule {cfg.schedule!r}; expected cosine or step")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (the groups differ only in weight decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class ModelEMA:
    """Exponential moving average of a model's weights and floating-point buffers.

    After update ``n`` (counting from 1) every floating-point entry of the state dict becomes
    ``ema = d_n * ema + (1 - d_n) * model`` with ``d_n = decay * (1 - exp(-n / 2000))``: ultralytics' ramp
    (``utils/torch_utils.py``, ``ModelEMA``, ``tau=2000``), which lets the average follow the fast-changing
    early weights instead of remembering the random initialisation. Integer buffers (BatchNorm's
    ``num_batches_tracked``) are counters, not estimates, and are copied.

    ``module`` is the averaged copy, in eval mode and without gradients: evaluate it, never train it.
    """

    def __init__(self, model: nn.Module, decay: float, *, ramp_updates: float = EMA_RAMP_UPDATES) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.ramp_updates = ramp_updates
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """The effective decay of update number ``updates``: ``decay * (1 - exp(-updates / ramp_updates))``."""
        return self.decay * (1.0 - math.exp(-updates / self.ramp_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (same architecture as ``module``) into the average."""
        self.updates += 1
        decay = self.decay_at(self.updates)
        model_state = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            model_value = model_state[name].detach()
            if ema_value.is_floating_point():
                ema_value.lerp_(model_value.to(ema_value.dtype), 1.0 - decay)  # = d * ema + (1 - d) * model
            else:
                ema_value.copy_(model_value)

    def state_dict(self) -> dict[str, Any]:
        """``{"module": the averaged model's state dict, "updates": the number of updates so far}``."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. The decay is not restored: it comes from the config."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def grad_norm_and_clip(parameters: Iterable[torch.Tensor], max_norm: float) -> float:
    """The total L2 norm of all gradients, ``sqrt(sum_p ||grad_p||^2)``, measured before clipping; when
    ``max_norm > 0`` the gradients are then scaled in place so that their total norm is at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``). Parameters without a gradient are skipped; none at all gives 0.

    A non-finite norm is returned as is (the gradients then become NaN or 0 if clipped), for the caller to log.
    """
    with_grad = [param for param in parameters if param.grad is not None]
    if not with_grad:
        return 0.0
    if max_norm > 0:
        total_norm = nn.utils.clip_grad_norm_(with_grad, max_norm)
    else:
        total_norm = nn.utils.get_total_norm([param.grad for param in with_grad])
    return float(total_norm)
