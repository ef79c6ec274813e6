"""Study files the end-to-end tests write: studies whose runs train for real in seconds (one
epoch of 32 Fashion-MNIST images at 16 px), built from one set of defaults so a change of the
training options reaches every such test."""
from __future__ import annotations

#: the ``[defaults]`` of a tiny study: one epoch of 32 training and 32 validation images
TINY_DEFAULTS = """\
set = "FashionMNIST"
image_size = 16
train_subset = 32
val_subset = 32
batch_size = 32
epochs = 1
increase_start = 0
increase_end = 1
device = "cpu"
workers = 0
"""

#: one MobileNetV1 2:4 row
TINY_ROW = """\
[[rows]]
id = "r"
arch = "mobilenet_v1"
N = 2
M = 4
"""


def tiny_study(*, study: str = "", defaults: str = "", rows: str = TINY_ROW) -> str:
    """The TOML of a MaxQ study with :data:`TINY_DEFAULTS`; ``study`` and ``defaults`` are extra
    lines for those tables, ``rows`` the ``[[rows]]`` tables."""
    return (f'[study]\nmethods = ["SoftMaxQConv2DBN"]\n{study}'
            f"[defaults]\n{TINY_DEFAULTS}{defaults}{rows}")


#: the ``[defaults]`` of a study whose one run (row ``mbv3``) lasts long enough to be stopped
#: mid-epoch: 3 epochs of 4 steps of MobileNetV3-small, each step logged
SLOW_DEFAULTS = """\
set = "FashionMNIST"
arch = "mobilenet_v3_small"
train_subset = 128
val_subset = 64
batch_size = 32
epochs = 3
increase_end = 2
workers = 0
print_freq = 1
device = "cpu"
"""


def slow_study(*, defaults: str = "") -> str:
    """The TOML of a one-row MaxQ study with :data:`SLOW_DEFAULTS` and ``defaults`` added."""
    return (f'[study]\nmethods = ["SoftMaxQConv2DBN"]\n[defaults]\n{SLOW_DEFAULTS}{defaults}'
            f'[[rows]]\nid = "mbv3"\n')
