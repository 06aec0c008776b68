"""Model registry: classifiers by name, built for a dataset's shape.

Every model maps ``images: (N, C, H, W) float32`` (normalised) to
``logits: (N, K) float32`` where N is the batch size, C the number of input
channels (1 or 3), H = W the image size in pixels and K the number of classes.

Names: ``convnet`` (small fast CNN, the CPU default), ``resnet20`` (CIFAR-style,
He et al. 2016, "Deep Residual Learning", section 4.2), torchvision's
``resnet18``/``resnet34``/``resnet50``/``mobilenet_v2``/``vgg16_bn``,
``alexnet_bn`` (the Label Refinery paper's AlexNet variant) and any timm model
as ``timm:NAME``.

Below ``SMALL_IMAGE_PX`` pixels the torchvision models get a small-image stem
(3x3 stride-1 first convolution, no max-pool), as CIFAR-sized inputs would
otherwise be reduced to 1x1 maps before the last stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError

SMALL_IMAGE_PX = 64


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model: stored with every checkpoint.

    Attributes:
        name: registry name (see :func:`available_models`).
        num_classes: K, the number of output logits.
        in_channels: C, 1 (grayscale) or 3 (RGB).
        image_size: H = W of the inputs the model is trained on, in pixels.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ConvNet(nn.Module):
    """Small fast CNN for 28-32 px images: 21.9 M multiply-adds per 1x28x28 image (convolutions and the linear layer).

    Layout with the defaults: conv32 - pool - conv64 - conv64 - pool - conv128 - conv128 -
    global average pool - linear. ``stages`` gives the 3x3 conv-BN-ReLU layers per stage
    (stage i has ``width * 2**i`` channels, a 2x2 max-pool between stages); ``stem_stride=2`` makes the
    first convolution stride 2 in place of the first max-pool. ``benchmarks/quick_frontier.py`` measures variants
    (their accuracy per second: BENCHMARKS.md).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32, stages: tuple[int, ...] = (1, 2, 2),
                 stem_stride: int = 1):
        super().__init__()
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, depth in enumerate(stages):
            if i and not (i == 1 and stem_stride == 2):  # a stride-2 stem replaces the first max-pool
                layers.append(nn.MaxPool2d(2))
            for d in range(depth):
                layers.append(conv_bn(c_in, width * 2**i, stride=stem_stride if i == d == 0 else 1))
                c_in = width * 2**i
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions) with a 1x1 projection shortcut when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (He et al. 2016, section 4.2): 3 stages x 3 blocks, 16/32/64 channels."""

    def __init__(self, num_classes: int, in_channels: int = 3, blocks_per_stage: int = 3):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, 16)]
        c_in = 16
        for stage, c_out in enumerate((16, 32, 64)):
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(c_in, c_out, stride=2 if (stage > 0 and b == 0) else 1))
                c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AlexNetBN(nn.Module):
    """AlexNet with BatchNorm after each of its 5 conv layers and its first 2 fc layers; no dropout, no bias on the last layer.

    The variant shipped with the Label Refinery paper's code (Bagherinezhad et
    al. 2018, hessamb/label-refinery). For inputs below ``SMALL_IMAGE_PX`` the
    first convolution is 3x3 stride 1 and the first max-pool is dropped.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 224):
        super().__init__()
        small = image_size < SMALL_IMAGE_PX
        first = (
            [nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)]
            if small
            else [nn.Conv2d(in_channels, 64, 11, stride=4, padding=2, bias=False)]
        )
        self.features = nn.Sequential(
            *first, nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            *([] if small else [nn.MaxPool2d(3, 2)]),
            nn.Conv2d(64, 192, 5, padding=2, bias=False), nn.BatchNorm2d(192), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2) if not small else nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1, bias=False), nn.BatchNorm2d(384), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2) if not small else nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(6), nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(256 * 36, 4096, bias=False), nn.BatchNorm1d(4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096, bias=False), nn.BatchNorm1d(4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _torchvision(name: str) -> Callable[[ModelSpec], nn.Module]:
    """Factory for a torchvision classifier with a K-way head, C input channels and a small-image stem below 64 px."""

    def build(spec: ModelSpec) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, name)(weights=None, num_classes=spec.num_classes)
        small = spec.image_size < SMALL_IMAGE_PX
        if name.startswith("resnet"):
            if small or spec.in_channels != 3:
                model.conv1 = (
                    nn.Conv2d(spec.in_channels, 64, 3, stride=1, padding=1, bias=False)
                    if small
                    else nn.Conv2d(spec.in_channels, 64, 7, stride=2, padding=3, bias=False)
                )
            if small:
                model.maxpool = nn.Identity()
        elif name == "mobilenet_v2":
            old = model.features[0][0]
            model.features[0][0] = nn.Conv2d(
                spec.in_channels, old.out_channels, 3, stride=1 if small else 2, padding=1, bias=False
            )
        elif name == "vgg16_bn":
            old = model.features[0]
            model.features[0] = nn.Conv2d(spec.in_channels, old.out_channels, 3, padding=1)
            if small:
                # Keep four of the five 2x2 max-pools: 32 px -> 2 px before the adaptive pool.
                pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
                model.features[pools[-1]] = nn.Identity()
        return model

    return build


_REGISTRY: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "convnet": lambda s: ConvNet(s.num_classes, s.in_channels),
    "resnet20": lambda s: ResNet20(s.num_classes, s.in_channels),
    "alexnet_bn": lambda s: AlexNetBN(s.num_classes, s.in_channels, s.image_size),
    "resnet18": _torchvision("resnet18"),
    "resnet34": _torchvision("resnet34"),
    "resnet50": _torchvision("resnet50"),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "vgg16_bn": _torchvision("vgg16_bn"),
}


def available_models() -> list[str]:
    """Registered model names (``timm:NAME`` and ``module.path:factory`` are accepted on top of these)."""
    return sorted(_REGISTRY) + ["timm:NAME", "module.path:factory"]


def _factory_parts(name: str) -> tuple[str, str] | None:
    """``("module.path", "factory")`` for a user model name ``module.path:factory``, else None."""
    module, sep, attr = name.partition(":")
    if not sep or module == "timm" or not attr or not all(p.isidentifier() for p in [*module.split("."), attr]):
        return None
    return module, attr


def _factory(name: str):
    """The callable a user model name ``module.path:factory`` names, checked to take the documented keywords.

    Raises:
        ConfigError: the module cannot be imported, has no such name, or it is not a callable that accepts
            ``num_classes``, ``in_channels`` and ``image_size`` keyword arguments.
    """
    import importlib
    import inspect

    module, attr = _factory_parts(name)
    try:
        imported = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"model {name!r}: cannot import {module} ({e}); put its folder on PYTHONPATH or install "
                          "it") from None
    except Exception as e:  # the module itself fails: a SyntaxError, or an error raised while it is imported
        raise ConfigError(f"model {name!r}: importing {module} raised {type(e).__name__}: {e}; fix the module "
                          f"(python -c 'import {module}' shows where)") from None
    factory = getattr(imported, attr, None)
    if factory is None:
        raise ConfigError(f"model {name!r}: {module} has no {attr!r}")
    if not callable(factory):
        raise ConfigError(f"model {name!r}: {module}.{attr} is not callable")
    try:
        inspect.signature(factory).bind(num_classes=2, in_channels=3, image_size=32)
    except TypeError as e:  # the signature cannot take the documented keywords
        raise ConfigError(f"model {name!r}: {module}.{attr} cannot be called as factory(num_classes=K, "
                          f"in_channels=C, image_size=S) ({e}); give a function with those keyword arguments "
                          "that returns an nn.Module") from None
    except ValueError:
        pass  # no signature to inspect (some builtins): the call itself is checked
    return factory


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` naming the known models when ``name`` is not one of them (a user factory
    ``module.path:factory`` must be importable)."""
    if name in _REGISTRY or (name.startswith("timm:") and len(name) > 5):
        return
    if _factory_parts(name) is not None:
        _factory(name)
        return
    raise ConfigError(f"unknown model {name!r}; known models: {', '.join(available_models())}")


def build_model(spec: ModelSpec) -> nn.Module:
    """Build an untrained model from its spec.

    Args:
        spec: name, K, C and image size.

    A name ``module.path:factory`` is your own model: ``factory(num_classes=K, in_channels=C, image_size=S)``
    must return the ``nn.Module`` (importable wherever the run, ``evaluate`` or ``load_classifier`` rebuild it).

    Returns:
        An ``nn.Module`` mapping ``(N, C, H, W) float32`` to ``(N, K)`` logits.

    Raises:
        ConfigError: unknown name, K < 2, C not in {1, 3}, image size < 4 px, an unknown timm model,
            ``timm:NAME`` requested where timm is not installed, or a factory that cannot be imported or
            does not return an ``nn.Module``.
    """
    check_model_name(spec.name)
    if spec.num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {spec.num_classes}")
    if spec.in_channels not in (1, 3):
        raise ConfigError(f"in_channels must be 1 or 3, got {spec.in_channels}")
    if spec.image_size < 4:
        raise ConfigError(f"image_size must be >= 4 px, got {spec.image_size}")
    if spec.name.startswith("timm:"):
        try:
            import timm
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigError(f"model {spec.name!r} needs timm: pip install 'labelrefinery[timm]'") from None
        try:
            return timm.create_model(
                spec.name[5:], pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_channels
            )
        except RuntimeError as e:  # timm: "Unknown model (...)"
            raise ConfigError(f"timm has no model {spec.name[5:]!r} ({e}); list them with timm.list_models()") from None
    if spec.name in _REGISTRY:
        return _REGISTRY[spec.name](spec)
    try:
        model = _factory(spec.name)(num_classes=spec.num_classes, in_channels=spec.in_channels,
                                    image_size=spec.image_size)
    except ConfigError:
        raise
    except Exception as e:  # the user's factory failed: its own message, one line (its traceback on request)
        raise ConfigError(f"model {spec.name!r}: factory(num_classes={spec.num_classes}, in_channels="
                          f"{spec.in_channels}, image_size={spec.image_size}) raised {type(e).__name__}: {e}; fix "
                          "the factory (call it the same way in Python to see the traceback)") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec.name!r}: the factory returned {type(model).__name__}, not an nn.Module")
    with torch.no_grad():
        was_training = model.training
        out = model.eval()(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size))
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {spec.name!r}: for 2 images of {spec.in_channels}x{spec.image_size}x"
                          f"{spec.image_size} it returned {shape}, not logits of shape (2, {spec.num_classes}); "
                          "make the factory use num_classes")
    return model
