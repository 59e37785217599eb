"""network: building, saving, loading, and folding batch norms for inference."""

from __future__ import annotations

import pytest
import torch


def test_fuse_batchnorm_keeps_outputs_and_module_tree(tiny_model):
    """Folded norms give the same logits (float rounding) and the encoder stays callable."""
    from geounet.models.network import fuse_batchnorm, load_model

    net, _ = load_model(tiny_model)
    torch.manual_seed(1)
    for m in net.modules():  # non-trivial running statistics, so folding is really tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        logits, feats = net(x), net.encoder(x)
    n_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    folded = fuse_batchnorm(net)
    assert 0 < folded < n_norms  # the tiny model's unused deeper encoder stages keep theirs
    with torch.inference_mode():
        torch.testing.assert_close(net(x), logits, atol=1e-4, rtol=1e-4)
        for a, b in zip(net.encoder(x), feats):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == n_norms - folded
    net.train()
    with pytest.raises(ValueError):
        fuse_batchnorm(net)
