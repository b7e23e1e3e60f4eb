"""One freeze policy for every backbone (trainable=last:N), timm models and their weights.

Small random-weight models of each family (torchvision and timm), tiny images, CPU; no
weights are downloaded (a timm "pretrained" file is a random model saved in the hub's
layouts below a temporary input_root).
"""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision
from torch import nn

from pixelplay_lib import backbones
from pixelplay_lib.config import make_config, notebook_config
from pixelplay_lib.experts.imagenet import N_IMAGENET, load_imagenet_network
from pixelplay_lib.model import (
    Net,
    WeightsUnavailable,
    build_model,
    set_trainable,
    trainable_problems,
)

try:
    import timm
except ImportError:  # timm is optional: its cases are skipped, saying so
    timm = None
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install timm)")


def tiny_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1),
                     CNBlockConfig(32, None, 1)])


def tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3,
                                                num_heads=2, hidden_dim=16, mlp_dim=32)


def tiny_timm_vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3)


# family -> (classifier factory, parameter-name prefixes that last:1 trains, batch-norm net)
FAMILIES = {
    "resnet18": (lambda: torchvision.models.resnet18(), ["layer4."], True),
    "regnet_x_400mf": (lambda: torchvision.models.regnet_x_400mf(),
                       ["trunk_output.block4."], True),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(),
                        ["features.7.", "features.8."], True),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(),
                           ["features.11.", "features.12.", "classifier.0."], True),
    "convnext (torchvision)": (tiny_convnext, ["features.4.", "features.5.", "classifier.0."],
                               False),
    "vit (torchvision)": (tiny_vit, ["encoder.layers.encoder_layer_2.", "encoder.ln."], False),
    "timm convnext_atto": (lambda: timm.create_model("convnext_atto"),
                           ["stages.3.", "head.norm."], False),
    "timm efficientnet_b0": (lambda: timm.create_model("efficientnet_b0"),
                             ["blocks.6.", "conv_head.", "bn2."], True),
    "timm vit": (tiny_timm_vit, ["blocks.2.", "norm."], False),
}
FAMILY_PARAMS = [pytest.param(name, marks=needs_timm if name.startswith("timm") else ())
                 for name in FAMILIES]


def make_net(family: str, spec: str) -> Net:
    """A Net (with an attribute head) on a random-weight model of `family`, policy `spec`."""
    torch.manual_seed(0)
    body, width = backbones.split_head(FAMILIES[family][0]())
    net = Net(body, nn.Linear(width, 5), nn.Linear(width, 3))
    set_trainable(net, spec)
    return net


def record_grad_mode(net: Net) -> dict[str, bool]:
    """Forward hooks on every leaf module of the body with parameters (conv, norm, linear):
    whether autograd was on when it ran (filled by the next forward)."""
    seen: dict[str, bool] = {}
    for name, module in net.body.named_modules():
        if not any(True for _ in module.children()) and any(True for _ in module.parameters()):
            module.register_forward_hook(
                lambda m, i, o, name=name: seen.__setitem__(name, torch.is_grad_enabled()))
    return seen


def one_step(net: Net) -> None:
    net.train()
    logits, _, attr = net(torch.randn(4, 3, 32, 32), extras=True)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + \
        nn.functional.binary_cross_entropy_with_logits(attr, torch.rand(4, 3))
    loss.backward()


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_last_1_trains_the_last_stage_and_the_heads_only(family):
    net = make_net(family, "last:1")
    prefixes = FAMILIES[family][1]
    trains = {n for n, p in net.body.named_parameters() if p.requires_grad}
    expected = {n for n, _ in net.body.named_parameters() if n.startswith(tuple(prefixes))}
    assert trains == expected and expected
    assert all(p.requires_grad for p in [*net.head.parameters(), *net.attr_head.parameters()])


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_frozen_prefix_gets_no_gradient_no_autograd_and_keeps_its_batchnorm(family):
    net = make_net(family, "last:1")
    batchnorms = {n: m for n, m in net.body.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert bool(batchnorms) == FAMILIES[family][2]
    stats = {n: m.running_mean.clone() for n, m in batchnorms.items()}
    grad_on = record_grad_mode(net)
    one_step(net)
    for name, p in net.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    for name, module in net.body.named_modules():
        if name in grad_on:  # the module's own parameters train <=> it ran with autograd on
            trains = any(p.requires_grad for p in module.parameters(recurse=False))
            assert grad_on[name] == trains, (name, grad_on[name])
    for name, m in batchnorms.items():
        frozen = not any(p.requires_grad for p in m.parameters())
        assert m.training != frozen, name  # frozen BatchNorm in eval mode after .train()
        assert torch.equal(m.running_mean, stats[name]) == frozen, name


@pytest.mark.parametrize("family", ["resnet18", "vit (torchvision)",
                                    pytest.param("timm convnext_atto", marks=needs_timm)])
def test_the_no_grad_prefix_does_not_change_the_output(family):
    net = make_net(family, "last:1").eval()
    x = torch.randn(2, 3, 32, 32)
    plain = net.head(net.body(x))  # the body's own forward: no prefix handling
    torch.testing.assert_close(net(x), plain, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["efficientnet_b0",
                                    pytest.param("timm convnext_atto", marks=needs_timm)])
def test_last_0_all_and_every_stage(family):
    stages = backbones.stages_of(make_net(family, "all").body)
    # last:0: the heads alone; the whole body runs without autograd
    net = make_net(family, "last:0")
    assert not any(p.requires_grad for p in net.body.parameters())
    grad_on = record_grad_mode(net)
    one_step(net)
    assert grad_on and not any(grad_on.values())
    # last:<number of stages>: everything but the stem
    net = make_net(family, f"last:{len(stages.stages)}")
    frozen = {n for n, p in net.body.named_parameters() if not p.requires_grad}
    assert frozen == set(stages.stem)
    # all: every parameter, every module with autograd
    net = make_net(family, "all")
    grad_on = record_grad_mode(net)
    one_step(net)
    assert all(p.requires_grad for p in net.parameters()) and all(grad_on.values())


def test_old_names_are_the_same_policy_for_resnets():
    a, b = build_model("resnet18", 5, "none", "layer4,fc"), build_model("resnet18", 5, "none",
                                                                          "last:1")
    assert [p.requires_grad for p in a.parameters()] == [p.requires_grad for p in b.parameters()]
    c = build_model("resnet18", 5, "none", "all")
    assert all(p.requires_grad for p in c.parameters())


@pytest.mark.parametrize("arch, spec, message", [
    ("resnet18", "last:5", r"ResNet has 4 stages \(layer1, layer2, layer3, layer4\): use "
                           r"last:0 to last:4"),
    ("regnet_x_400mf", "last:7", "RegNet has 4 stages"),
    pytest.param("timm:convnext_atto", "last:5", "ConvNeXt.group_matcher has 4 stages",
                 marks=needs_timm),
    ("vgg11", "last:1", "no stage table for VGG .* name its blocks instead "
                        r"\(classifier, features"),
    ("resnet18", "layer9,fc", "no block named layer9"),
])
def test_policy_errors_name_the_stages_and_the_fix(arch, spec, message):
    with pytest.raises(ValueError, match=message):
        build_model(arch, 5, "none", spec)
    # preflight finds the same on the meta device, before any image is decoded
    assert len(trainable_problems(arch, spec)) == 1
    assert trainable_problems(arch, "all") == []


@pytest.mark.parametrize("value", ["last:x", "last:-1", "layer4,last:2", "last:"])
def test_config_refuses_malformed_last(value):
    with pytest.raises(ValueError, match=r"trainable=.*last:N takes a whole number >= 0"):
        make_config(trainable=value)


def test_papermill_passes_last_n_as_text_and_the_notebooks_take_it():
    from papermill.cli import _resolve_type  # how `papermill -p trainable last:2` types it

    values = {"trainable": _resolve_type("last:2"), "arch": _resolve_type("timm:convnext_atto"),
              "loss_balance": _resolve_type("logit_adjust")}
    assert values["trainable"] == "last:2"
    cfg = notebook_config(values, set(values))
    assert (cfg.trainable, cfg.arch, cfg.loss_balance) == ("last:2", "timm:convnext_atto",
                                                           "logit_adjust")
    assert make_config(trainable=" last: 3 ").trainable == " last: 3 "  # spaces tolerated
    assert build_model("resnet18", 5, "none", " last: 3 ").body.layer1[0].conv1.weight \
        .requires_grad is False


# ------------------------------------------------------------------ timm weights
def save_timm_weights(root, layout: str) -> tuple[dict[str, torch.Tensor], str]:
    """A random convnext_atto saved below input_root `root` the way `layout` says; returns
    its state dict and the file."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    state = timm.create_model("convnext_atto").state_dict()
    where = {"hub folder": "datasets/me/weights/convnext_atto.d2_in1k/model.safetensors",
             "hf cache": "datasets/me/hf/models--timm--convnext_atto.d2_in1k/snapshots/0a1b/"
                         "model.safetensors",
             "original url": "datasets/me/weights/convnext_atto_d2-01bb0f51.pth"}[layout]
    path = root / where
    path.parent.mkdir(parents=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state, str(path)


@needs_timm
@pytest.mark.parametrize("layout", ["hub folder", "hf cache", "original url"])
def test_timm_imagenet_weights_found_below_input_root(tmp_path, layout):
    state, _ = save_timm_weights(tmp_path, layout)
    net = build_model("timm:convnext_atto", 5, "imagenet", "last:1", input_root=str(tmp_path))
    assert torch.equal(net.body.stem[0].weight, state["stem.0.weight"])
    assert torch.equal(net.body.stages[3].blocks[0].conv_dw.weight,
                       state["stages.3.blocks.0.conv_dw.weight"])
    # the ImageNet expert takes the same file, with its 1000-way head
    pretrained = load_imagenet_network("timm:convnext_atto", "imagenet", str(tmp_path))
    assert not pretrained.training
    assert torch.equal(pretrained.get_classifier().weight, state["head.fc.weight"])
    assert pretrained(torch.randn(1, 3, 32, 32)).shape == (1, N_IMAGENET)


@needs_timm
def test_timm_weights_nowhere_fail_at_once_naming_the_folder_to_attach(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a kernel with the internet off
    with pytest.raises(WeightsUnavailable, match=r"attach a dataset holding the folder "
                                                 r"convnext_atto.d2_in1k/"):
        build_model("timm:convnext_atto", 5, "imagenet", "last:1", input_root=str(tmp_path))
    problems = backbones.timm_weights_problems("timm:convnext_atto", "imagenet", str(tmp_path))
    assert len(problems) == 1 and "convnext_atto.d2_in1k/" in problems[0]
    assert backbones.timm_weights_problems("timm:convnext_atto", "none", str(tmp_path)) == []


@needs_timm
def test_timm_imagenet_expert_needs_a_1000_way_head(tmp_path):
    with pytest.raises(ValueError, match="21841 classes, not ImageNet-1k's 1000: pick a tag"):
        load_imagenet_network("timm:convnext_tiny.fb_in22k", "imagenet", str(tmp_path))
    finetuned = tmp_path / "finetuned.pth"
    torch.save(timm.create_model("convnext_atto", num_classes=40).state_dict(), finetuned)
    with pytest.raises(ValueError, match="is not a state dict of timm:convnext_atto with its "
                                         "original head"):
        load_imagenet_network("timm:convnext_atto", str(finetuned), str(tmp_path))
    with pytest.raises(ValueError, match="weights='none': the ImageNet expert needs"):
        load_imagenet_network("timm:convnext_atto", "none", str(tmp_path))
    with pytest.raises(ValueError, match="timm has no model 'convnext_nope'"):
        load_imagenet_network("timm:convnext_nope", "imagenet", str(tmp_path))


def test_without_timm_every_entry_point_says_pip_install_timm(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    message = r"arch='timm:convnext_atto' needs the timm package.*pip install timm"
    with pytest.raises(ValueError, match=message):
        build_model("timm:convnext_atto", 5, "none", "last:1")
    with pytest.raises(ValueError, match=message):
        load_imagenet_network("timm:convnext_atto", "imagenet", str(tmp_path))
    from pixelplay_lib.preflight import weights_problems

    problems = weights_problems("timm:convnext_atto", "imagenet", str(tmp_path))
    assert len(problems) == 1 and "pip install timm" in problems[0]
