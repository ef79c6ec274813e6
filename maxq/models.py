"""Registry of architectures: stock torchvision builders plus our MobileNetV1.

``build(arch, num_classes, in_channels=3, small_input=False)`` returns a stock model (module names
and state_dict keys are torchvision's). Two adaptations, both confined to the stem:

* ``in_channels != 3``: the stem conv takes that many channels (e.g. 1 for Fashion-MNIST);
* ``small_input=True`` (28–32 px data): the stem conv gets stride 1 (ResNets also a 3×3 kernel and
  no max-pool), the usual CIFAR-style adaptation, so 32 px inputs are not reduced to 1×1 maps.

The stem stays dense under every method (method.md §7), so these changes never touch a sparse layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
import torchvision


# ----------------------------------------------------------------------------- MobileNetV1
def _conv_bn_relu(cin: int, cout: int, stride: int, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017), width 1.0: a stem conv then 13 depthwise-separable blocks.

    Names follow torchvision's MobileNets: ``features`` (``features.0`` is the stem; block i is
    ``features.i.0`` depthwise and ``features.i.1`` pointwise) and ``classifier``.
    """

    #: (output channels, stride) of the 13 depthwise-separable blocks
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, stem_stride: int = 2):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, 32, stem_stride)]
        cin = 32
        for cout, stride in self.BLOCKS:
            layers.append(nn.Sequential(
                _conv_bn_relu(cin, cin, stride, groups=cin),          # depthwise 3x3
                _conv_bn_relu(cin, cout, 1, kernel=1),                # pointwise 1x1
            ))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------- stems
def _replace_conv(old: nn.Conv2d, *, in_channels: int, kernel: int | None = None,
                  stride: int | None = None) -> nn.Conv2d:
    kernel = old.kernel_size[0] if kernel is None else kernel
    stride = old.stride[0] if stride is None else stride
    return nn.Conv2d(in_channels, old.out_channels, kernel, stride, kernel // 2,
                     groups=old.groups, bias=old.bias is not None)


def _adapt_resnet(model: nn.Module, in_channels: int, small_input: bool) -> nn.Module:
    if small_input:
        model.conv1 = _replace_conv(model.conv1, in_channels=in_channels, kernel=3, stride=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _replace_conv(model.conv1, in_channels=in_channels)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _adapt_mobilenet(model: nn.Module, in_channels: int, small_input: bool) -> nn.Module:
    stem = model.features[0][0]
    if small_input or in_channels != 3:
        model.features[0][0] = _replace_conv(stem, in_channels=in_channels,
                                             stride=1 if small_input else None)
        nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model


@dataclass(frozen=True)
class ArchSpec:
    name: str
    builder: Callable[..., nn.Module]
    adapt: Callable[[nn.Module, int, bool], nn.Module]
    family: str


def _mobilenet_v1(num_classes: int) -> nn.Module:
    return MobileNetV1(num_classes=num_classes)


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec for spec in (
        ArchSpec("resnet18", torchvision.models.resnet18, _adapt_resnet, "resnet"),
        ArchSpec("resnet34", torchvision.models.resnet34, _adapt_resnet, "resnet"),
        ArchSpec("resnet50", torchvision.models.resnet50, _adapt_resnet, "resnet"),
        ArchSpec("mobilenet_v1", _mobilenet_v1, _adapt_mobilenet, "mobilenet"),
        ArchSpec("mobilenet_v2", torchvision.models.mobilenet_v2, _adapt_mobilenet, "mobilenet"),
        ArchSpec("mobilenet_v3_small", torchvision.models.mobilenet_v3_small, _adapt_mobilenet,
                 "mobilenet"),
        ArchSpec("mobilenet_v3_large", torchvision.models.mobilenet_v3_large, _adapt_mobilenet,
                 "mobilenet"),
    )
}


def get(arch: str) -> ArchSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}") from None


def build(arch: str, num_classes: int = 1000, in_channels: int = 3,
          small_input: bool = False) -> nn.Module:
    """A freshly initialised stock model (no pretrained weights: nothing is downloaded)."""
    spec = get(arch)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1; got {in_channels}")
    model = spec.builder(num_classes=int(num_classes))
    return spec.adapt(model, int(in_channels), bool(small_input))

