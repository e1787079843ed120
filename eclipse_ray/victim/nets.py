"""Victim classifiers: ResNet-18 (CIFAR variant) for paper-faithful runs, and a fast small net for sweeps.

``FastNet`` follows airbench (Jordan, 2024): a frozen 2x2 patch-whitening stem
initialised from the training images, three conv–pool–BN–GELU groups, max-pool
head and a scaled linear classifier. At ``width=64`` it is airbench94's shape
(64/256/256 channels); the default ``width=32`` (32/64/128) keeps a 10-epoch
run on 4,660 CIFAR images to a couple of CPU minutes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from eclipse_ray.registry import Registry


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, momentum=0.4)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.bn2(self.conv2(x)))


class FastNet(nn.Module):
    """airbench-style net: whitening stem, three conv groups, max-pool head."""

    def __init__(self, num_classes: int, width: int = 32, in_channels: int = 3,
                 widths: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        stem = 2 * in_channels * 2 * 2
        self.whiten = nn.Conv2d(in_channels, stem, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        if widths is None:
            widths = (width, 2 * width, 4 * width) if width < 64 else (width, 4 * width, 4 * width)
        self.layers = nn.Sequential(ConvGroup(stem, widths[0]), ConvGroup(widths[0], widths[1]),
                                    ConvGroup(widths[1], widths[2]))
        self.head = nn.Linear(widths[2], num_classes, bias=False)

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float = 5e-4, rel_tol: float | None = 1e-6) -> None:
        """Set the stem to whiten 2x2 patches of ``x`` (N, C, H, W), ± each eigenvector.

        Directions the training patches do not vary in (eigenvalue ≤ ``rel_tol`` × the
        largest) get zero weight instead of the largest gain: trained on grayscale
        images (ISS-G), the net must ignore colour, not amplify it 45× at test time.
        ``rel_tol=None`` keeps every direction (an attacker's surrogate, see
        :func:`eclipse_ray.attacks.surrogate.build_surrogate`).
        """
        c = x.shape[1]
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, c * 4).double()
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        evals, evecs = torch.linalg.eigh(cov)
        gain = 1 / torch.sqrt(evals.clamp_min(0) + eps)
        if rel_tol is not None:
            gain = torch.where(evals > rel_tol * evals.max(), gain, 0.0)
        w = (evecs.T * gain[:, None]).reshape(-1, c, 2, 2).float()
        self.whiten.weight.copy_(torch.cat([w, -w]))
        self.whiten.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage feature maps (used by V&B's attention)."""
        return self.layers(F.gelu(self.whiten(x)))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`features`' output."""
        x = F.adaptive_max_pool2d(features, 1).flatten(1)
        return self.head(x) / x.shape[1] ** 0.5 * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class AirbenchNet(FastNet):
    """airbench94's network as published (Jordan, 2024, ``airbench94.py``): the fast net's layers at
    widths w/4w/4w, BatchNorm without a learnt scale (weight frozen at 1, bias learnt), every 3x3 conv
    initialised to pass its input channels through (identity/Dirac) and the logits scaled by 1/9.

    Departures, all for images that do not vary in every colour direction (grayscale defenses, digits):
    BatchNorm ε is torch's 1e-5 (airbench's 1e-12 gives NaN on a channel constant over a batch), the
    whitening stem keeps the fast net's zero gain on directions the training patches do not vary in, and
    the first layer's identity filters skip those dead stem channels (:meth:`init_whitening`).
    """

    def __init__(self, num_classes: int, width: int = 64, in_channels: int = 3) -> None:
        super().__init__(num_classes, width, in_channels, widths=(width, 4 * width, 4 * width))
        for m in self.layers.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
            elif isinstance(m, nn.Conv2d):
                nn.init.dirac_(m.weight.data[:m.in_channels])

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float = 5e-4, rel_tol: float | None = 1e-6) -> None:
        """The fast net's whitening; then every first-layer channel that would pass through a stem channel
        of zero gain (a direction the training patches do not vary in: colour, on grayscale images) gets a
        fresh random filter instead. A channel constant over the batch has BatchNorm scale its gradient by
        1/√ε ≈ 316: the identity filters on those channels make training diverge to chance (digits,
        grayscale CIFAR)."""
        super().init_whitening(x, eps, rel_tol)
        conv = self.layers[0].conv1
        dead = self.whiten.weight.flatten(1).abs().amax(1) == 0
        rows = torch.nonzero(dead[: conv.out_channels]).flatten()
        if len(rows):
            fresh = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=False).weight
            conv.weight[rows] = fresh[rows].to(conv.weight)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_max_pool2d(features, 1).flatten(1)) / 9


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, stages 64/128/256/512."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage feature maps (used by V&B's attention)."""
        return self.stages(F.relu(self.bn1(self.conv1(x))))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`features`' output."""
        return self.linear(F.adaptive_avg_pool2d(features, 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def fast_net(num_classes: int, width: int) -> nn.Module:
    """airbench-style fast net (whitened 2x2 stem, 3 conv groups; victim.width sets its channels)"""
    return FastNet(num_classes, width=width)


def airbench_net(num_classes: int, width: int) -> nn.Module:
    """airbench94's net (unscaled BatchNorm, identity-initialised convs, logits/9; width 64 = airbench94)"""
    return AirbenchNet(num_classes, width=width)


def resnet18(num_classes: int, width: int) -> nn.Module:
    """ResNet-18, CIFAR variant (ECLIPSE's victim; victim.width unused)"""
    return ResNet18(num_classes)


# victim.arch -> f(num_classes, width) -> a fresh network taking float NCHW images in [0, 1] after the
# trainer's per-channel normalisation. A plugin's factory may carry ``recipe`` (the training defaults
# of victim/train.py's RECIPES); without one it trains with the fast net's recipe.
VICTIMS: Registry = Registry("victim.arch", {"fast": fast_net, "airbench": airbench_net,
                                                 "resnet18": resnet18}, group="eclipse_ray.victims")


def build_net(arch: str, num_classes: int, width: int) -> nn.Module:
    """A fresh ``arch`` network with channels-last weights.

    Channels-last lets oneDNN pick its NHWC convolutions: the width-16 fast net
    trains ≈ 1.3–1.5× faster on one CPU thread (batch 128), and it is the layout
    GPUs prefer under mixed precision. Inputs may stay NCHW.
    """
    net = VICTIMS[arch](num_classes, width)
    if not isinstance(net, nn.Module):
        raise TypeError(f"victim.arch {arch!r}: its factory returned {type(net).__name__}, not a torch module")
    return net.to(memory_format=torch.channels_last)
