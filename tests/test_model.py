"""Freeze policy, frozen BatchNorm, weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from pixelplay_lib.model import WeightsUnavailable, build_model


def one_step(net, lr: float = 0.1) -> None:
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
    net.train()
    x = torch.randn(4, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()


def test_one_step_moves_only_layer4_and_fc():
    torch.manual_seed(0)
    net = build_model("resnet18", 50, "none", "layer4,fc")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    one_step(net)
    after = net.state_dict()
    for name, value in after.items():
        trains = name.startswith(("body.layer4.", "head."))
        if trains and not name.endswith("num_batches_tracked"):
            assert not torch.equal(before[name], value), f"{name} did not change"
        elif not trains:
            # frozen weights AND frozen BatchNorm running statistics stay bit-identical
            assert torch.equal(before[name], value), f"{name} moved"
    assert any("running_mean" in k and k.startswith("body.layer1") for k in after)


def test_frozen_batchnorm_stays_in_eval_mode():
    net = build_model("resnet18", 10, "none", "layer4,fc").train()
    assert not net.body.layer1[0].bn1.training and not net.body.bn1.training
    assert net.body.layer4[0].bn1.training
    net.eval()
    assert not net.body.layer4[0].bn1.training


def test_frozen_stem_runs_without_autograd_and_gives_the_same_output():
    torch.manual_seed(0)
    net = build_model("resnet18", 10, "none", "layer4,fc").train()
    grad_on = {}
    for name in ("conv1", "bn1", "maxpool", "layer1", "layer3", "layer4", "avgpool"):
        net.body.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: grad_on.__setitem__(name, torch.is_grad_enabled()))
    x = torch.randn(2, 3, 64, 64)
    assert net(x).requires_grad
    assert grad_on == {"conv1": False, "bn1": False, "maxpool": False, "layer1": False,
                       "layer3": False, "layer4": True, "avgpool": True}
    net.eval()
    full = net.head(net.body(x))  # the body's own forward, every block with autograd
    torch.testing.assert_close(net(x), full, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_other_torchvision_classifiers(arch):
    net = build_model(arch, 7, "none", "fc")
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["head.weight",
                                                                         "head.bias"]


def test_unknown_block_and_arch_are_clear_errors():
    with pytest.raises(ValueError, match="no block named layer9"):
        build_model("resnet18", 5, "none", "layer9,fc")
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet1000", 5, "none", "fc")


def test_weights_from_a_file_and_attached_imagenet_copy(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    net = build_model("resnet18", 5, str(path), "fc")
    assert torch.equal(net.body.conv1.weight, reference.conv1.weight)
    # weights=imagenet finds torchvision's file anywhere under input_root (an attached
    # Kaggle dataset) before trying to download it
    enum = torchvision.models.ResNet18_Weights.DEFAULT
    attached = tmp_path / "inputs" / "weights" / enum.url.rsplit("/", 1)[-1]
    attached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), attached)
    net = build_model("resnet18", 5, "imagenet", "fc", input_root=str(tmp_path / "inputs"))
    assert torch.equal(net.body.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


def test_missing_weights_file_and_unreachable_download(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("resnet18", 5, str(tmp_path / "nope.pth"), "fc")

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    # No network here: make the download fail at once instead of waiting for a time-out.
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsUnavailable, match="attach a dataset holding resnet18-"):
        build_model("resnet18", 5, "imagenet", "fc", input_root=str(tmp_path))
