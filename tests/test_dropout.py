"""peftkit.dropout: the bits-drawn dropout that training swaps in for nn.Dropout on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftkit.dropout import BitsDropout, install


def test_it_drops_the_asked_share_and_stays_unbiased():
    torch.manual_seed(0)
    layer = BitsDropout(0.1).train()
    x = torch.ones(1000, 1000)
    y = layer(x)
    kept = y != 0
    # 1e6 draws: the kept share's standard error is 3e-4, so 2e-3 is > 6 sigma.
    assert abs(kept.float().mean().item() - 0.9) < 2e-3
    drop = round(0.1 * 65536)
    assert torch.all(y[kept] == 65536 / (65536 - drop))  # kept elements scaled by 1 / (1 - p), p quantised
    assert abs(y.mean().item() - 1.0) < 3e-3


def test_every_element_position_is_dropped_alike():
    # The four 16-bit lanes of each random 64-bit word: a lane always kept would show as a column here.
    torch.manual_seed(1)
    y = BitsDropout(0.5).train()(torch.ones(20000, 8))
    share = (y != 0).float().mean(dim=0)
    assert torch.all((share - 0.5).abs() < 0.02), share


def test_same_seed_same_mask_and_gradients_through_kept_elements():
    layer = BitsDropout(0.3).train()
    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(7)
    a = layer(x)
    torch.manual_seed(7)
    b = layer(x)
    assert torch.equal(a, b)
    a.sum().backward()
    mask = (a != 0).float()
    torch.testing.assert_close(x.grad, mask / (1 - round(0.3 * 65536) / 65536))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_mode_and_p_zero_are_the_identity(dtype):
    x = torch.randn(8, 16, dtype=dtype)
    assert BitsDropout(0.5).eval()(x) is x
    assert torch.equal(BitsDropout(0.0).train()(x), x)
    y = BitsDropout(0.5).train()(x)
    assert y.dtype == dtype and y.shape == x.shape


def test_install_swaps_active_dropouts_and_keeps_the_state_dict():
    model = nn.Sequential(
        nn.Linear(4, 4), nn.Dropout(0.1), nn.ModuleDict({"a": nn.Dropout(0.2)}), nn.Dropout(0.0)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert install(model) == 2
    assert type(model[1]) is BitsDropout and model[1].p == 0.1
    assert type(model[2]["a"]) is BitsDropout and model[2]["a"].p == 0.2
    assert type(model[3]) is nn.Dropout  # p = 0: nothing to draw
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
