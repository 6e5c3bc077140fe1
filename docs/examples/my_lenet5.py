"""A plugin model: LeNet-5 (LeCun et al. 1998) for small grey or colour images, as `model.name: my_lenet5`.

Every model is a BodyHead: `body` the representation, `head` the classifier (what FedPer, FedRep, LG-FedAvg,
FedBABU, FedRoD and FedOBP's classifier-only variant split on).
Use:  fedharness run SPEC --plugin docs/examples/my_lenet5.py model.name=my_lenet5
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models import BodyHead, model


@model("my_lenet5")
def my_lenet5(input_shape: tuple[int, ...], num_classes: int) -> BodyHead:
    channels, height, width = input_shape
    if min(height, width) < 8:
        raise ValueError(f"my_lenet5 needs images of at least 8x8, got {height}x{width}")
    conv = nn.Sequential(nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 3 if min(height, width) < 16 else 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten())
    with torch.no_grad():
        dim = int(conv(torch.zeros(1, *input_shape)).shape[1])
    body = nn.Sequential(*conv, nn.Linear(dim, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
    return BodyHead(body, nn.Linear(84, num_classes))
