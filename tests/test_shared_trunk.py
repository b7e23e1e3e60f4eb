"""The fine-tuned network and the pretrained ImageNet network share their frozen trunk.

With trainable=layer4,fc on ImageNet weights, stem..layer3 of both networks are the same
frozen, eval-mode, bit-identical modules: experts.network_forward runs them once per view.
A stand-in "pretrained" file (random weights) plays torchvision's ImageNet file here.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torchvision

from pixelplay_lib import backbones
from pixelplay_lib.experts import network_forward
from pixelplay_lib.experts.imagenet import OUTPUT, imagenet_forward, load_imagenet_network
from pixelplay_lib.inference import classifier_forward
from pixelplay_lib.model import build_model

# arch -> (policy, the last module of the shared trunk, the first one after it)
CASES = {"resnet18": ("layer4,fc", "layer3", "layer4"),
         "mobilenet_v3_small": ("last:2", "features.9", "features.10")}


def pair(tmp_path, arch: str, trainable: str, same_weights: bool = True):
    """(fine-tuned Net, pretrained classifier), both in eval mode as the experts use them;
    the Net starts from the pretrained file unless same_weights is False."""
    torch.manual_seed(0)
    path = tmp_path / f"{arch}-pretrained.pth"
    torch.save(torchvision.models.get_model(arch).state_dict(), path)
    torch.manual_seed(1)
    net = build_model(arch, 7, str(path) if same_weights else "none", trainable)
    return net.eval(), load_imagenet_network(arch, str(path), str(tmp_path))


def count_calls(*modules: torch.nn.Module) -> Counter:
    calls: Counter = Counter()
    for i, module in enumerate(modules):
        module.register_forward_hook(lambda m, a, o, i=i: calls.update([i]))
    return calls


@pytest.mark.parametrize("arch", list(CASES))
def test_shared_trunk_runs_once_and_equals_the_two_forwards(tmp_path, arch):
    trainable, last_shared, first_own = CASES[arch]
    net, pretrained = pair(tmp_path, arch, trainable)
    form, k = backbones.shared_trunk(net.body, pretrained)
    assert form.modules[k - 1] == last_shared and form.modules[k] == first_own
    forward, keep = network_forward(net, pretrained)
    assert set(keep) == {"logits", "features", OUTPUT}
    calls = count_calls(net.body.get_submodule(last_shared), pretrained.get_submodule(last_shared),
                        net.body.get_submodule(first_own), pretrained.get_submodule(first_own))
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        shared = forward(x)
        assert calls == Counter({0: 1, 2: 1, 3: 1})  # the pretrained trunk never ran
        separate = {**classifier_forward(net)(x), **imagenet_forward(pretrained)(x)}
    assert shared.keys() == separate.keys()
    for name in separate:
        torch.testing.assert_close(shared[name], separate[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("why", ["the stem trains", "other weights", "a BatchNorm statistic "
                                 "differs", "training mode"])
def test_no_sharing_unless_the_prefix_is_frozen_identical_and_in_eval(tmp_path, why):
    net, pretrained = pair(tmp_path, "resnet18", "all" if why == "the stem trains"
                           else "layer4,fc", same_weights=why != "other weights")
    if why == "a BatchNorm statistic differs":
        pretrained.bn1.running_var[0] += 1e-3  # bn1 differs: only conv1 before it is shared
        assert backbones.shared_trunk(net.body, pretrained)[1] == 1
        pretrained.conv1.weight.data[0, 0, 0, 0] += 1e-3
    if why == "training mode":
        pretrained.train()
    assert backbones.shared_trunk(net.body, pretrained) is None
    forward, _ = network_forward(net, pretrained)
    calls = count_calls(net.body.layer3, pretrained.layer3)
    with torch.no_grad():
        forward(torch.randn(2, 3, 64, 64))
    assert calls == Counter({0: 1, 1: 1})  # each network ran its own trunk


def test_families_without_a_sequential_form_run_their_own_forward():
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    assert backbones.sequential_form(vit) is None
    assert backbones.shared_trunk(vit, vit) is None


def tiny_swin() -> torch.nn.Module:
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1],
                                              num_heads=[1, 1], window_size=[2, 2])


@pytest.mark.parametrize("make", [
    lambda: torchvision.models.resnet18(), lambda: torchvision.models.regnet_x_400mf(),
    lambda: torchvision.models.efficientnet_b0(), lambda: torchvision.models.mobilenet_v3_small(),
    lambda: torchvision.models.convnext_tiny(), tiny_swin],
    ids=["resnet", "regnet", "efficientnet", "mobilenet_v3", "convnext", "swin"])
def test_sequential_form_is_the_models_own_forward_at_every_split(make):
    """run_from(run_until(x, k), k) == model(x) for every k: the forms in backbones.py are
    the torchvision forwards, module for module."""
    torch.manual_seed(0)
    model = make().eval()
    form = backbones.sequential_form(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        for k in range(len(form.modules) + 1):
            got = backbones.run_from(model, form, backbones.run_until(model, form, x, k), k)
            torch.testing.assert_close(got, reference, rtol=0, atol=0)
