"""The authors' state-dict key names for the kit's models: a sparse conv and the BatchNorm after
it become one authors' conv-BN module (``<m>.conv``, ``<m>.mask``, ``<m>.scale``); ResNet and
MobileNetV1 follow the authors' model code, MobileNetV2/V3 an assumed scheme on torchvision's
names (:func:`official_names`). Used by :mod:`maxq.official` to map a checkpoint key for key."""
from __future__ import annotations

from torch import nn

from maxq import sparse as sp


def _resnet_module(conv: str) -> str:
    # layerL.B.convK -> layerL.B.convbnK; layerL.B.downsample.0 -> layerL.B.downsample
    if conv.endswith(".downsample.0"):
        return conv[:-len(".0")]
    head, _, last = conv.rpartition(".")
    return f"{head}.{last.replace('conv', 'convbn')}"


def _mobilenet_v1_dense(name: str) -> str:
    # kit: features.0.{0,1} stem; features.j.0.{0,1} depthwise conv/BN; classifier
    # authors: conv1.{0,1}; features.(j-1).{0,1}; fc
    if name == "classifier":
        return "fc"
    parts = name.split(".")
    if parts[:2] == ["features", "0"]:
        return f"conv1.{parts[2]}"
    return f"features.{int(parts[1]) - 1}.{parts[3]}"


def _mobilenet_v1_module(conv: str) -> str:
    # kit features.j.1.0 (pointwise conv) -> authors' features.(j-1).3
    return f"features.{int(conv.split('.')[1]) - 1}.3"


def _torchvision_module(conv: str, bn: str | None) -> str:
    """Assumed scheme on torchvision names: a conv-BN pair ``P.0``/``P.1`` (a
    Conv2dNormActivation) becomes the conv-BN module ``P``; any other sparse conv (e.g.
    MobileNetV2's projection ``features.i.conv.2`` with BN ``.conv.3``) becomes the module in
    the conv's own place, the BN's place vanishing (as the authors' MobileNetV1 does); a sparse
    conv with no BN after it (V3's squeeze-excitation ``fc1``/``fc2``, with bias) also keeps its
    place: ``fc1.conv.weight``, ``fc1.conv.bias``, ``fc1.mask``."""
    head, _, last = conv.rpartition(".")
    if last == "0" and bn == f"{head}.1":
        return head
    return conv


def official_names(model: nn.Module, arch: str) -> dict[str, str]:
    """``{kit state_dict key: authors' key}`` for every key of the kit's sparsified ``model``.

    A sparse conv ``C`` and the BatchNorm ``B`` that follows it become one authors' conv-BN module
    ``<m>``: ``C.weight -> <m>.conv.weight``, ``C.weight_mask -> <m>.mask``, ``B.* ->
    <m>.scale.*``. Dense layers keep their names (ResNet) or take the authors' MobileNetV1 names.
    For ``mobilenet_v2``/``v3`` the names are the kit's (torchvision's), and ``<m>`` follows
    :func:`_torchvision_module` (an assumption: the authors published no such model code).
    """
    modules = list(model.named_modules())
    sparse_names = set(sp.sparse_layers(model))
    family = "resnet" if arch.startswith("resnet") else arch
    rename: dict[str, str] = {}               # kit module name -> authors' module name
    for i, (name, module) in enumerate(modules):
        if name not in sparse_names:
            continue
        bn = next((n for n, m in modules[i + 1:] if isinstance(m, nn.BatchNorm2d)), None)
        bn_follows = bn is not None and (
            modules[i + 1][0] == bn or bn.rsplit(".", 1)[0] == name.rsplit(".", 1)[0])
        bn = bn if bn_follows else None
        if family == "resnet":
            target = _resnet_module(name)
        elif family == "mobilenet_v1":
            target = _mobilenet_v1_module(name)
        else:
            target = _torchvision_module(name, bn)
        rename[name] = f"{target}.conv"
        if bn is not None:
            rename[bn] = f"{target}.scale"
        rename[f"{name}#mask"] = target
    names: dict[str, str] = {}
    for key in model.state_dict():
        module, _, param = key.rpartition(".")
        if param == "weight_mask" and module in sparse_names:
            names[key] = f"{rename[module + '#mask']}.mask"
        elif module in rename:
            names[key] = f"{rename[module]}.{param}"
        elif family == "mobilenet_v1":
            names[key] = f"{_mobilenet_v1_dense(module)}.{param}"
        else:
            names[key] = key
    return names
