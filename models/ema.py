"""An exponential moving average of a model's weights (the trainer's ``ema_decay``).

The update is torch's ``get_ema_multi_avg_fn`` (one fused lerp over all parameters), with
``AveragedModel``'s convention: the first update copies the weights, every later one does
W_ema <- decay W_ema + (1 - decay) W. So after updates with weights W_1..W_t,

    W_ema = decay^(t-1) W_1 + (1 - decay) sum_{s=2..t} decay^(t-s) W_s.

Unlike ``AveragedModel`` it keeps only the parameters, not a deep copy of the whole module:
buffers (the semantic variants' frozen item vectors) are constants that ``AveragedModel`` would
duplicate and copy back at every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightEMA:
    """Exponential moving average of ``model``'s parameters.

    Args:
        model: the trained module; its parameters (``named_parameters`` order) are averaged.
        decay: the weight of the running average at each update, in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._lerp = get_ema_multi_avg_fn(decay)
        self.names = [name for name, _ in model.named_parameters()]
        self.averages = [p.detach().clone() for p in model.parameters()]
        self.n_averaged = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Folds ``model``'s current parameters into the average (call after each step).

        Args:
            model: the module the average was made from.
        """
        current = [p.detach() for p in model.parameters()]
        if self.n_averaged == 0:
            torch._foreach_copy_(self.averages, current)
        else:
            self._lerp(self.averages, current, self.n_averaged)
        self.n_averaged += 1

    def model_state(self, model: nn.Module) -> dict[str, Tensor]:
        """``model.state_dict()`` with the averaged parameters in place of the current ones
        (buffers as they are), ready for ``load_state_dict``.

        Args:
            model: the module the average was made from.

        Returns:
            A state dict whose parameter tensors are the averages themselves (not copies).
        """
        averaged = {
            id(param): average
            for param, average in zip(model.parameters(), self.averages, strict=True)
        }
        return {
            key: averaged.get(id(value), value.detach())
            for key, value in model.state_dict(keep_vars=True).items()
        }

    def state_dict(self) -> dict:
        """The average and its update count (copies), for a checkpoint.

        Returns:
            {"n_averaged": int, "averages": {parameter name: tensor}}.
        """
        return {
            "n_averaged": self.n_averaged,
            "averages": {n: a.clone() for n, a in zip(self.names, self.averages, strict=True)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores what ``state_dict`` returned.

        Args:
            state: a ``state_dict()`` of an average of the same model.

        Raises:
            ValueError: parameters that differ from this average's.
        """
        if sorted(state["averages"]) != sorted(self.names):
            raise ValueError("the checkpoint's weight average is of other parameters")
        with torch.no_grad():
            for name, average in zip(self.names, self.averages, strict=True):
                average.copy_(state["averages"][name])
        self.n_averaged = int(state["n_averaged"])
