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
    """MobileNetV1 (Howard et al. 2017): a stem conv then 13 depthwise-separable blocks
    (``width_mult`` scales every layer's channels; 1.0 is the paper's net).

    Names follow torchvision's MobileNets: ``features`` (``features.0`` is the stem; block i is
    ``features.i.0`` depthwise and ``features.i.1`` pointwise) and ``classifier``.
    """

    #: (output channels, stride) of the 13 depthwise-separable blocks
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, stem_stride: int = 2,
                 width_mult: float = 1.0):
        super().__init__()
        cin = _scaled(32, width_mult)
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, cin, stem_stride)]
        for cout, stride in self.BLOCKS:
            cout = _scaled(cout, width_mult)
            layers.append(nn.Sequential(
                _conv_bn_relu(cin, cin, stride, groups=cin),          # depthwise 3x3
                _conv_bn_relu(cin, cout, 1, kernel=1),                # pointwise 1x1
            ))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        # PyTorch's default initialisation of every layer, as in the authors' MobileNetV1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _scaled(channels: int, width_mult: float) -> int:
    """Channels times the width multiplier, rounded to a multiple of 16 (so every N:M pattern
    up to M = 16 still divides them), at least 16."""
    if width_mult == 1.0:
        return channels
    return max(16, int(round(channels * width_mult / 16)) * 16)


class ScaledResNet(torchvision.models.ResNet):
    """torchvision's ResNet with stage widths ``base * (1, 2, 4, 8)`` instead of ``64 * (...)``.

    Module names, block classes and initialisation are torchvision's (``conv1, bn1, layer1..4,
    fc``), so state_dict keys and the sparse-layer policy are unchanged; only the widths shrink.
    Used for ``width_mult != 1`` (the CPU proxies); ``width_mult == 1`` builds the stock model.
    """

    def __init__(self, block, layers: list[int], num_classes: int, base: int):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = base, 1, 1, 64
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base, layers[0])
        self.layer2 = self._make_layer(block, 2 * base, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * base, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * base, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * base * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def _resnet(block, layers: list[int], stock: Callable[..., nn.Module]):
    def build(num_classes: int, width_mult: float = 1.0) -> nn.Module:
        if width_mult == 1.0:
            return stock(num_classes=num_classes)
        return ScaledResNet(block, layers, num_classes, _scaled(64, width_mult))
    return build


def _torchvision_mobilenet(stock: Callable[..., nn.Module]):
    def build(num_classes: int, width_mult: float = 1.0) -> nn.Module:
        if width_mult == 1.0:
            return stock(num_classes=num_classes)
        return stock(num_classes=num_classes, width_mult=width_mult)
    return build


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
        if not isinstance(model, MobileNetV1):   # torchvision's MobileNets init convs this way
            nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model


@dataclass(frozen=True)
class ArchSpec:
    name: str
    builder: Callable[..., nn.Module]
    adapt: Callable[[nn.Module, int, bool], nn.Module]
    family: str


def _mobilenet_v1(num_classes: int, width_mult: float = 1.0) -> nn.Module:
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult)


_BASIC, _BOTTLENECK = torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec for spec in (
        ArchSpec("resnet18", _resnet(_BASIC, [2, 2, 2, 2], torchvision.models.resnet18),
                 _adapt_resnet, "resnet"),
        ArchSpec("resnet34", _resnet(_BASIC, [3, 4, 6, 3], torchvision.models.resnet34),
                 _adapt_resnet, "resnet"),
        ArchSpec("resnet50", _resnet(_BOTTLENECK, [3, 4, 6, 3], torchvision.models.resnet50),
                 _adapt_resnet, "resnet"),
        ArchSpec("mobilenet_v1", _mobilenet_v1, _adapt_mobilenet, "mobilenet"),
        ArchSpec("mobilenet_v2", _torchvision_mobilenet(torchvision.models.mobilenet_v2),
                 _adapt_mobilenet, "mobilenet"),
        ArchSpec("mobilenet_v3_small",
                 _torchvision_mobilenet(torchvision.models.mobilenet_v3_small),
                 _adapt_mobilenet, "mobilenet"),
        ArchSpec("mobilenet_v3_large",
                 _torchvision_mobilenet(torchvision.models.mobilenet_v3_large),
                 _adapt_mobilenet, "mobilenet"),
    )
}


def get(arch: str) -> ArchSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}") from None


def build(arch: str, num_classes: int = 1000, in_channels: int = 3,
          small_input: bool = False, width_mult: float = 1.0) -> nn.Module:
    """A freshly initialised stock model (no pretrained weights: nothing is downloaded).

    ``width_mult != 1`` scales every stage's channels (ResNets: ``base`` 64 -> a multiple of 16;
    MobileNets: torchvision's ``width_mult``), for proxies small enough to converge on a CPU."""
    spec = get(arch)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1; got {in_channels}")
    if not 0 < float(width_mult) <= 4:
        raise ValueError(f"width_mult must be in (0, 4]; got {width_mult}")
    model = spec.builder(num_classes=int(num_classes), width_mult=float(width_mult))
    return spec.adapt(model, int(in_channels), bool(small_input))

