"""Plain convolutional networks: LeNets, CNN5 and VGGs.

Layout of every model here (module names in brackets)::

    normalize -> features [features.i] -> pool (VGG only) -> flatten -> classifier [classifier.i]

Builders take ``num_classes, in_channels, input_size, width, mean, std`` (keywords) and return a
:class:`~robustprune.models.base.Net`. Flattened sizes are computed by arithmetic, so any input size
large enough for the conv stack works.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from robustprune.models.base import (
    MODELS,
    Net,
    Normalize,
    as_hw,
    conv_out,
    require_size,
    scaled,
)

def _lenet_like(
    name: str,
    *,
    convs: Sequence[int],
    padding: int,
    fcs: Sequence[int],
    num_classes: int,
    in_channels: int,
    input_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> Net:
    """conv(5x5, padding) -> ReLU -> maxpool(2) per entry of ``convs``; then FCs with ReLU between."""
    hw = as_hw(input_size)
    h, w = hw
    features: list[nn.Module] = []
    c_in = in_channels
    for c_out in convs:
        features += [nn.Conv2d(c_in, c_out, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2)]
        h, w = conv_out(h, 5, padding=padding) // 2, conv_out(w, 5, padding=padding) // 2
        c_in = c_out
    minimum = next(s for s in range(1, 1024) if _lenet_out(s, len(convs), padding) >= 1)
    require_size(name, hw, (h, w), minimum)
    classifier: list[nn.Module] = []
    f_in = c_in * h * w
    for f_out in fcs:
        classifier += [nn.Linear(f_in, f_out), nn.ReLU()]
        f_in = f_out
    classifier.append(nn.Linear(f_in, num_classes))
    return Net(
        Normalize(mean, std),
        OrderedDict(
            features=nn.Sequential(*features),
            flatten=nn.Flatten(1),
            classifier=nn.Sequential(*classifier),
        ),
    )


def _lenet_out(size: int, n_convs: int, padding: int) -> int:
    for _ in range(n_convs):
        size = conv_out(size, 5, padding=padding) // 2
    return size


@MODELS.register("lenet5-caffe")
def lenet5_caffe(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """LeNet-5-Caffe 20-50-800-500 (ANP paper): conv20 5x5, pool, conv50 5x5, pool, FC500, FC classes.

    Convs have no padding: 28 -> 24 -> 12 -> 8 -> 4, so the flatten is 50*4*4 = 800 on 28x28 inputs
    (431,080 parameters for 10 classes). ``width`` scales 20, 50 and 500. Needs inputs >= 16x16.
    """
    return _lenet_like(
        "lenet5-caffe",
        convs=(scaled(20, width), scaled(50, width)),
        padding=0,
        fcs=(scaled(500, width),),
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        mean=mean,
        std=std,
    )


@MODELS.register("lenet-mnist-w")
def lenet_mnist_w(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """MNIST LeNet of Ye2019 (AdvPrune) (Table 1): conv 2w, conv 4w, FC(196w, 64w), FC(64w, classes).

    ``width`` is the factor w (1 is tiny; the paper uses 1..16). 5x5 convs with padding 2, each
    followed by ReLU and 2x2 max-pool: 28 -> 14 -> 7, so the flatten is 4w*7*7 = 196w.
    """
    return _lenet_like(
        "lenet-mnist-w",
        convs=(scaled(2, width), scaled(4, width)),
        padding=2,
        fcs=(scaled(64, width),),
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        mean=mean,
        std=std,
    )


@MODELS.register("lenet-cifar-w")
def lenet_cifar_w(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """CIFAR LeNet of Ye2019 (AdvPrune) (Table 1): conv 6w, conv 16w, FC(400w,120w), FC(120w,84w), FC(84w,classes).

    5x5 convs without padding, each followed by ReLU and 2x2 max-pool: 32 -> 28 -> 14 -> 10 -> 5, so
    the flatten is 16w*5*5 = 400w on 32x32 inputs (16w*4*4 on 28x28). ``width`` is the factor w.
    """
    return _lenet_like(
        "lenet-cifar-w",
        convs=(scaled(6, width), scaled(16, width)),
        padding=0,
        fcs=(scaled(120, width), scaled(84, width)),
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        mean=mean,
        std=std,
    )


@MODELS.register("cnn5")
def cnn5(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """CNN5 of Merkle2022: two 5x5 convs (32, 64) and three dense layers (256, 128, classes).

    conv32 5x5 pad 2 -> ReLU -> maxpool 2 -> conv64 5x5 pad 2 -> ReLU -> maxpool 2 -> FC 256 -> ReLU
    -> FC 128 -> ReLU -> FC classes. On 28x28 the flatten is 64*7*7 = 3136. The paper gives only
    "two 5x5 convolutions and three dense layers"; the channel/unit counts are our choice.
    ``width`` scales 32, 64, 256 and 128.
    """
    return _lenet_like(
        "cnn5",
        convs=(scaled(32, width), scaled(64, width)),
        padding=2,
        fcs=(scaled(256, width), scaled(128, width)),
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        mean=mean,
        std=std,
    )


# ---------------------------------------------------------------------------------------- VGG
VGG_CFGS: dict[str, tuple[int | str, ...]] = {
    # Ye2019 (AdvPrune) "CIFAR VGG" with w = 1 (times w): a VGG-16 at 1/16 width.
    "vgg-cifar-w": (4, 4, "M", 8, 8, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
}


def _vgg(
    cfg_name: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: int | Sequence[int],
    width: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> Net:
    """3x3 conv (pad 1, no bias) -> BN -> ReLU per number, 2x2 max-pool per "M", then
    AdaptiveAvgPool2d(1) and one Linear(last channels, classes).

    A max-pool that would shrink the map below 1x1 (e.g. the 5th on 28x28 inputs) is skipped, so any
    input size works; the skipped pools are simply absent from ``features``.
    """
    h, w = as_hw(input_size)
    layers: list[nn.Module] = []
    c_in = in_channels
    for v in VGG_CFGS[cfg_name]:
        if v == "M":
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            continue
        c_out = scaled(int(v), width)
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        c_in = c_out
    return Net(
        Normalize(mean, std),
        OrderedDict(
            features=nn.Sequential(*layers),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            classifier=nn.Sequential(nn.Linear(c_in, num_classes)),
        ),
    )


@MODELS.register("vgg-cifar-w")
def vgg_cifar_w(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """CIFAR VGG of Ye2019 (AdvPrune) (Table 1): 4w,4w,M,8w,8w,M,16w x3,M,32w x3,M,32w x3,M, A, FC(32w, classes).

    3x3 convs with BN and ReLU; ``width`` is the factor w (w = 16 gives VGG-16 with BN). Pools that
    would make the map smaller than 1x1 are skipped; A is AdaptiveAvgPool2d(1).
    """
    return _vgg(
        "vgg-cifar-w", num_classes=num_classes, in_channels=in_channels, input_size=input_size,
        width=width, mean=mean, std=std,
    )


@MODELS.register("vgg16")
def vgg16(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """VGG-16 with BN, CIFAR style: 13 3x3 convs (64..512), global avg-pool, FC(512, classes).

    Same layout as ``vgg-cifar-w`` at w = 16; ``width`` scales every channel count.
    """
    return _vgg(
        "vgg16", num_classes=num_classes, in_channels=in_channels, input_size=input_size,
        width=width, mean=mean, std=std,
    )


@MODELS.register("vgg11")
def vgg11(
    *, num_classes=10, in_channels=1, input_size=28, width=1.0, mean=(0.0,), std=(1.0,)
) -> Net:
    """VGG11-like of Merkle2022: VGG-11 (config A) convs with BN, global avg-pool, FC(512, classes).

    64,M,128,M,256,256,M,512,512,M,512,512,M with 3x3 convs + BN + ReLU; the ImageNet head (three
    4096-unit FCs) is replaced by one Linear(512, classes), as the paper adapts first/last layers to
    CIFAR-10. ``width`` scales every channel count.
    """
    return _vgg(
        "vgg11", num_classes=num_classes, in_channels=in_channels, input_size=input_size,
        width=width, mean=mean, std=std,
    )
