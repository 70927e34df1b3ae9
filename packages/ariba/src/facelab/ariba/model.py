"""The small CNN the simulations train (conv filters are what ARIBA's fragments examine)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from facelab.core.hub import PretrainedMixin, register_model


@register_model(key="facelab.ariba.SmallCNN")
class SmallCNN(PretrainedMixin, nn.Module):
    """conv3x3(w) - ReLU - conv3x3(2w) - ReLU - adaptive max-pool 4x4 - fc(hidden) - ReLU -
    fc(classes). ``width=16, hidden=64`` on 8x8 digits: 38,986 parameters."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 16, hidden: int = 64
    ) -> None:
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "width": width,
            "hidden": hidden,
        }
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(4)
        self.fc1 = nn.Linear(2 * width * 16, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def get_arrays(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The model's state as numpy arrays (copies), in state-dict order."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load numpy arrays by name (strict: the keys must match)."""
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
