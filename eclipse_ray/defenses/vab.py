"""The Victim and the Beneficiary (V&B; Zhu et al., ICCV 2023, arXiv 2404.11265): a training-time backdoor defense.

No clean data is needed. Two networks train side by side on the poisoned set:

1. The *Victim* (Adam 1e-3, weight decay 5e-4, no augmentation) trains one
   epoch of cross-entropy on all data, then only on *suspicious* samples, so it
   becomes a strong poison detector. Suspicious = the per-sample entropy of its
   prediction, temporally smoothed (0.75·new + 0.25·old) and min-max
   normalised, lies below a threshold (``max(1 − 0.4·e, 0.2)`` in warm-up epoch
   ``e``, i.e. 0.6 then 0.2; 0.2 after).
2. The *Beneficiary* (SGD 0.1, momentum 0.9, weight decay 5e-4, lr ×0.1 at
   epochs 50/100/150 of 200, crop + flip) trains on the *credible* samples with
   AttentionMix (:mod:`eclipse_ray.victim.attention_mix`). Every 5 epochs the
   Victim trains one more epoch on the suspicious samples and the split is
   re-computed.
3. After epoch 100 (*semi-supervised suppression*) the suspicious samples lose
   their labels: pseudo-label = argmax of the Beneficiary's softmax averaged
   over two augmented views; every target (labelled and pseudo) becomes
   ``clip(onehot − softmax(Victim(x)/3), 0, 1)``; loss = mix loss + λ·unlabelled
   loss, λ = 0.1, then 0.5 after epoch 150. The Victim is refreshed every epoch.

Every epoch count is in the paper's units and multiplied by ``epoch_scale``, so
a 20-epoch CPU run (``epoch_scale=0.1``) keeps the schedule's shape. The
Victim's warm-up (3 epochs, as in the public code) is not scaled.

Deviations, each a setting, each from a measured failure on the CIFAR subset
(width-16 fast net, 10 % poisons; benchmarks/vab_quality.py):

* ``max_growth`` (1.2): a refreshed split keeps at most 1.2 × the warm-up
  split's size. Without it the Victim, trained on whatever it flags, drifted
  onto clean samples (Blend: precision 0.998 → 0.73) and the Beneficiary
  then learnt the trigger through the pseudo-labels (ASR 100 %).
* ``bn_recalibrate`` (on): after training, the Beneficiary's BatchNorm
  statistics are re-estimated on the un-mixed credible samples (+1.6 to +5
  points). Likewise the attention pass leaves the running statistics alone,
  and labelled and unlabelled views share one forward pass, so no statistic
  is ever computed from the suspicious samples alone.

Two paper values do not suit short runs of the fast net; the CPU benchmark
sets them (``lambda2=0.1``, ``temperature=1``), the defaults stay the paper's:

* λ2 = 0.5: at 10–30 epochs the Beneficiary is at ~60 % when λ switches, and
  self-training on its own pseudo-labels amplifies its bias (BadNets: 245 of
  466 suspicious samples pseudo-labelled "dog", test accuracy 52 → 36 % in
  one epoch).
* T = 3: the fast net's Victim reaches logit margins of only 6–7 on the
  poisons, so softmax(V/3) puts only 0.55–0.63 on the target class and
  suppression leaves ~40 % of a poison's pseudo-target on it (Blend: ASR
  100 % with a perfect split); at T = 1 it puts 0.99 there.

The model evaluated is the Beneficiary after its last epoch; the public code
reports its best *test* epoch, which we do not do (no model selection on the
test set). Both networks use ``victim.arch`` (the public code's Victim is
always a ResNet-18, and its Beneficiary gets a fresh avg-pool + linear head;
ours keeps the architecture's own head). The training loop never reads the
ground-truth poison mask; :meth:`VaB.train_victim` uses it only afterwards, to
report the split's precision and recall.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse_ray.config import ConfigError, setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.defenses.base import DefenseConfig
from eclipse_ray.tensors import augment_batch, pick_device, to_tensor
from eclipse_ray.victim.attention_mix import attention_mix, feature_attention
from eclipse_ray.victim.train import Victim, VictimConfig, new_net


@dataclass(frozen=True)
class VaB(DefenseConfig):
    name: ClassVar[str] = "vab"
    summary: ClassVar[str] = ("training-time: a poisoned Victim flags suspicious samples, a Beneficiary learns the "
                              "rest with AttentionMix and semi-supervised suppression (V&B)")
    epoch_scale: float = setting(1.0, "multiplies every Beneficiary epoch count below (0.1: 20-epoch CPU run)",
                                 gt=0.0, le=10.0)
    epochs: int = setting(200, "Beneficiary epochs (paper units, times epoch_scale)", ge=1)
    milestones: tuple[int, ...] = setting((50, 100, 150), "epochs where the Beneficiary's lr drops x lr_gamma")
    suppress_from: int = setting(100, "semi-supervised suppression after this epoch", ge=0)
    lambda_switch: int = setting(150, "unlabelled-loss weight switches lambda1 -> lambda2 after this epoch", ge=0)
    refresh_every: int = setting(5, "Victim epoch on suspicious data + new split every N epochs (paper units)", ge=1)
    lr: float = setting(0.1, "Beneficiary SGD learning rate", gt=0.0)
    lr_gamma: float = setting(0.1, "lr factor at each milestone", gt=0.0, le=1.0)
    lr_schedule: str = setting("step", "step: x lr_gamma at the milestones (paper); linear: 20 % warm-up then "
                               "linear decay to 0 (for short CPU runs)", choices=("step", "linear"))
    momentum: float = setting(0.9, "Beneficiary SGD momentum", ge=0.0, lt=1.0)
    weight_decay: float = setting(5e-4, "Beneficiary weight decay", ge=0.0)
    batch_size: int = setting(128, "batch size of both networks", ge=2)
    pad: int = setting(4, "Beneficiary augmentation: flip + translate by up to this many px", ge=0)
    lambda1: float = setting(0.1, "unlabelled-loss weight from suppress_from", ge=0.0)
    lambda2: float = setting(0.5, "unlabelled-loss weight after lambda_switch", ge=0.0)
    temperature: float = setting(3.0, "temperature of the Victim's softmax subtracted from targets", gt=0.0)
    attention_threshold: float = setting(0.1, "AttentionMix mask: attention >= this", ge=0.0, le=1.0)
    victim_lr: float = setting(1e-3, "Victim Adam learning rate", gt=0.0)
    victim_weight_decay: float = setting(5e-4, "Victim Adam weight decay (public code; the paper omits it)", ge=0.0)
    warmup: int = setting(3, "Victim warm-up: 1 epoch on all data, then warmup-1 epochs on suspicious data", ge=1)
    smoothing: float = setting(0.75, "weight of the new entropy in the temporal smoothing", gt=0.0, le=1.0)
    threshold: float = setting(0.2, "suspicious: normalised entropy below this (after warm-up)", gt=0.0, lt=1.0)
    threshold_decay: float = setting(0.4, "warm-up epoch e uses max(1 - threshold_decay*e, threshold)", ge=0.0)
    max_growth: float = setting(1.2, "a split refreshed after warm-up keeps at most this many times the warm-up "
                                "split's size, its lowest-entropy samples (not in the paper: guards against the "
                                "Victim drifting onto clean samples it then trains on; 0: no cap)", ge=0.0)
    pseudo_align: bool = setting(False, "distribution alignment of the pseudo-labels (ReMixMatch; not in the "
                                 "paper): scale the two-view softmax by credible label frequency / running mean "
                                 "prediction on suspicious samples before the argmax; meant to stop "
                                 "self-training routing every suspicious sample to one class, which on Blend it "
                                 "does not: it moves the class)")
    bn_recalibrate: bool = setting(True, "re-estimate the Beneficiary's BatchNorm statistics on the un-mixed "
                                   "credible samples after training (not in the paper: the running statistics "
                                   "otherwise come from the last few mixed batches)")

    def validate(self) -> None:
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            raise ConfigError(f"defense.milestones={list(self.milestones)}: must be increasing epochs ≥ 1")
        if 0 < self.max_growth < 1:
            raise ConfigError(f"defense.max_growth={self.max_growth}: must be 0 (no cap) or at least 1")
        if self.scaled(self.epochs) < 1:
            raise ConfigError(f"defense.epoch_scale={self.epoch_scale}: leaves no Beneficiary epoch "
                              f"(epochs={self.epochs})")

    def scaled(self, n: int) -> int:
        """An epoch count in paper units, times ``epoch_scale``, rounded half up."""
        return int(math.floor(n * self.epoch_scale + 0.5))

    def train_victim(self, victim_cfg: VictimConfig, train: ImageSet, seed: int,
                     progress: bool = True) -> tuple[Victim, dict[str, Any]]:
        """Train the Beneficiary on ``train``; extra metrics: the suspicious split's quality against the truth."""
        result = train_vab(self, victim_cfg, train.images, train.labels, train.num_classes, seed, progress)
        metrics = {"vab_epochs": result["epochs"], **split_quality(result["suspicious"], train.poisoned, "vab_"),
                   **split_quality(result["suspicious_warmup"], train.poisoned, "vab_warmup_")}
        return result["victim"], metrics


def split_quality(suspicious: np.ndarray, poisoned: np.ndarray, prefix: str) -> dict[str, float]:
    """Precision and recall of the suspicious set for the true poisons, and the share flagged."""
    flagged, truth = int(suspicious.sum()), int(poisoned.sum())
    hit = int((suspicious & poisoned).sum())
    return {f"{prefix}suspicious": flagged / max(len(suspicious), 1),
            f"{prefix}precision": hit / flagged if flagged else float("nan"),
            f"{prefix}recall": hit / truth if truth else float("nan")}


# ----------------------------------------------------------------------------------------------- the split


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of −p·log p over classes (the public code's scale; 0·log 0 taken as 0)."""
    p = torch.softmax(logits.float(), 1)
    return -torch.special.xlogy(p, p).mean(1)


def smooth_and_normalise(entropy: np.ndarray, previous: np.ndarray | None,
                         r: float) -> tuple[np.ndarray, np.ndarray]:
    """(min-max normalised smoothed entropy, smoothed entropy to carry to the next call)."""
    smoothed = entropy if previous is None else r * entropy + (1 - r) * previous
    lo, hi = smoothed.min(), smoothed.max()
    return (smoothed - lo) / (hi - lo) if hi > lo else np.zeros_like(smoothed), smoothed


def flag(score: np.ndarray, threshold: float, cap: int | None = None) -> np.ndarray:
    """Suspicious = normalised score below ``threshold``; at most ``cap`` of them, the lowest scores."""
    suspicious = score < threshold
    if cap is not None and suspicious.sum() > cap:
        suspicious = np.zeros(len(score), bool)
        suspicious[np.argsort(score, kind="stable")[:cap]] = True
    return suspicious


@torch.no_grad()
def _entropies(net: nn.Module, x_all: torch.Tensor, batch: int) -> np.ndarray:
    net.eval()
    out = [prediction_entropy(net(x_all[i:i + batch])) for i in range(0, len(x_all), batch)]
    return torch.cat(out).cpu().numpy()


def _epoch(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, batch: int,
           gen: torch.Generator) -> None:
    """One epoch of plain cross-entropy, no augmentation (the Victim's training)."""
    net.train()
    order = torch.randperm(len(x), generator=gen).to(x.device)
    for i in range(0, len(x), batch):
        idx = order[i:i + batch]
        if len(idx) < 2:
            continue
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class _Detector:
    """The Victim and its running split: trains on suspicious samples, re-scores everyone."""

    def __init__(self, cfg: VaB, net: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> None:
        self.cfg, self.net, self.x, self.y, self.gen = cfg, net, x, y, gen
        self.opt = torch.optim.Adam(net.parameters(), lr=cfg.victim_lr, weight_decay=cfg.victim_weight_decay)
        self.previous: np.ndarray | None = None
        self.suspicious = np.zeros(len(x), bool)
        self.cap: int | None = None  # most suspicious samples a refresh may flag (set after warm-up)

    def train_all(self) -> None:
        _epoch(self.net, self.opt, self.x, self.y, self.cfg.batch_size, self.gen)

    def train_suspicious(self) -> None:
        rows = torch.from_numpy(np.flatnonzero(self.suspicious)).to(self.x.device)
        if len(rows) >= 2:
            _epoch(self.net, self.opt, self.x[rows], self.y[rows], self.cfg.batch_size, self.gen)

    def rescore(self, threshold: float) -> np.ndarray:
        score, self.previous = smooth_and_normalise(_entropies(self.net, self.x, 512), self.previous,
                                                    self.cfg.smoothing)
        self.suspicious = flag(score, threshold, self.cap)
        return self.suspicious

    @torch.no_grad()
    def soft(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(Victim(x) / T): what is subtracted from the Beneficiary's targets during suppression."""
        self.net.eval()
        return torch.softmax(self.net(x).float() / self.cfg.temperature, 1)


def warm_up(cfg: VaB, det: _Detector, progress: bool = False) -> np.ndarray:
    """The Victim's warm-up (1 epoch on all data, then on suspicious data); returns the split after it."""
    det.train_all()
    for e in tqdm(range(1, cfg.warmup), desc="V&B victim warm-up", disable=not progress, leave=False):
        det.rescore(max(1 - cfg.threshold_decay * e, cfg.threshold))
        det.train_suspicious()
    split = det.rescore(cfg.threshold).copy()
    if cfg.max_growth > 0:
        det.cap = max(int(math.ceil(cfg.max_growth * split.sum())), 1)
    return split


# ----------------------------------------------------------------------------------------- the Beneficiary


def _batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def bn_stats_frozen(net: nn.Module) -> Iterator[None]:
    """Batch statistics still normalise, but the running statistics stay as they are.

    The attention pass is a side computation: letting it update the running
    statistics (with the fast net's BatchNorm momentum 0.4) skews what the
    evaluated model normalises with.
    """
    bns = _batchnorms(net)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


@torch.no_grad()
def recalibrate_bn(net: nn.Module, x: torch.Tensor, batch: int) -> None:
    """Replace BatchNorm running statistics by their plain average over ``x`` (no augmentation, no mixing).

    Mixed images have a lower variance than real ones, and with the fast net's
    momentum (0.4) the running statistics are mostly the last two or three
    batches', so the evaluated network would normalise real images with
    statistics of a few mixed batches.
    """
    bns = _batchnorms(net)
    if not bns or len(x) < 2:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    for i in range(0, len(x), batch):
        if len(x[i:i + batch]) >= 2:
            net(x[i:i + batch])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    net.eval()


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(F.log_softmax(logits.float(), 1) * targets).sum(1).mean()  # fp32 under bf16 autocast too


def _mixed_batch(cfg: VaB, ben: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views of ``x`` mixed with AttentionMix (attention from the Beneficiary itself)."""
    views = torch.cat([augment_batch(x, gen, cfg.pad), augment_batch(x, gen, cfg.pad)])
    with torch.no_grad(), bn_stats_frozen(ben):
        att = feature_attention(ben.features(views), tuple(x.shape[2:]))
    perm = torch.randperm(len(views), generator=gen).to(x.device)
    mixed, mixed_targets, _ = attention_mix(views, att, torch.cat([targets, targets]), perm,
                                            cfg.attention_threshold)
    return mixed, mixed_targets


class PseudoLabeller:
    """Pseudo-label = argmax of the two views' mean softmax; with ``prior``, distribution-aligned first.

    Alignment (ReMixMatch): p ← p · prior / running mean of p over past batches,
    so a class the Beneficiary over-predicts on the suspicious samples loses
    pseudo-labels to each sample's runner-up.
    """

    def __init__(self, prior: torch.Tensor | None = None, momentum: float = 0.99) -> None:
        self.prior, self.momentum = prior, momentum
        self.running: torch.Tensor | None = None

    def __call__(self, p_views: torch.Tensor, n: int) -> torch.Tensor:
        p = (p_views[:n] + p_views[n:]) / 2
        if self.prior is None:
            return p.argmax(1)
        mean = p.mean(0)
        self.running = mean if self.running is None else self.momentum * self.running + (1 - self.momentum) * mean
        return (p * self.prior / self.running.clamp_min(1e-6)).argmax(1)


def _beneficiary_epoch(cfg: VaB, ben: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                       num_classes: int, suspicious: np.ndarray, det: _Detector | None, lam: float,
                       gen: torch.Generator, lr_at: Callable[[float], float],
                       labeller: PseudoLabeller | None = None) -> float:
    """One Beneficiary epoch; ``det`` given = semi-supervised suppression with unlabelled weight ``lam``."""
    ben.train()
    cred = torch.from_numpy(np.flatnonzero(~suspicious)).to(x.device)
    susp = torch.from_numpy(np.flatnonzero(suspicious)).to(x.device)
    cred = cred[torch.randperm(len(cred), generator=gen).to(x.device)]
    susp = susp[torch.randperm(len(susp), generator=gen).to(x.device)]
    steps = len(cred) // cfg.batch_size + 1
    batch_u = len(susp) // steps
    loss_sum = 0.0
    for s in range(steps):
        idx = cred[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        if len(idx) < 2:
            continue
        for group in opt.param_groups:
            group["lr"] = lr_at(s / steps)
        xl = x[idx]
        onehot = F.one_hot(y[idx], num_classes).float()
        labelled = onehot if det is None else (onehot - det.soft(xl)).clamp(0, 1)
        mixed, targets = _mixed_batch(cfg, ben, xl, labelled, gen)
        uidx = susp[s * batch_u:(s + 1) * batch_u] if det is not None and batch_u >= 1 else susp[:0]
        if len(uidx) == 0:
            loss = _soft_ce(ben(mixed), targets)
        else:
            # One forward for labelled and unlabelled views, so BatchNorm's statistics (batch and
            # running) come from the whole batch, never from the suspicious samples alone.
            xu = x[uidx]
            u = torch.cat([augment_batch(xu, gen, cfg.pad), augment_batch(xu, gen, cfg.pad)])
            logits = ben(torch.cat([mixed, u]))
            logits_l, logits_u = logits[:len(mixed)], logits[len(mixed):]
            with torch.no_grad():
                p = torch.softmax(logits_u.detach().float(), 1)
                pseudo = F.one_hot((labeller or PseudoLabeller())(p, len(xu)), num_classes).float()
                target_u = (pseudo - det.soft(xu)).clamp(0, 1)
            loss = _soft_ce(logits_l, targets) + lam * _soft_ce(logits_u, torch.cat([target_u, target_u]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item()
    return loss_sum / steps


def train_vab(cfg: VaB, victim_cfg: VictimConfig, images: np.ndarray, labels: np.ndarray, num_classes: int,
              seed: int, progress: bool = True, stop_after_warmup: bool = False) -> dict[str, Any]:
    """Run V&B on uint8 NHWC ``images``; returns the Beneficiary (as a Victim) and the splits.

    Keys: ``victim`` (:class:`Victim`, ``None`` if ``stop_after_warmup``), ``suspicious_warmup``
    and ``suspicious`` (bool masks over the samples), ``epochs`` (Beneficiary epochs run).
    ``victim.precision=bf16``: both nets' forward passes under bfloat16 autocast (losses in fp32, as
    autocast computes them), the Beneficiary evaluated so too.
    """
    bf16 = victim_cfg.precision == "bf16"
    with torch.autocast(pick_device(victim_cfg.device).type, dtype=torch.bfloat16, enabled=bf16):
        out = _train_vab(cfg, victim_cfg, images, labels, num_classes, seed, progress, stop_after_warmup)
    if out["victim"] is not None:
        out["victim"].bf16 = bf16
    return out


def _train_vab(cfg: VaB, victim_cfg: VictimConfig, images: np.ndarray, labels: np.ndarray, num_classes: int,
               seed: int, progress: bool, stop_after_warmup: bool) -> dict[str, Any]:
    if len(images) < 2:
        raise ConfigError("defense vab: needs at least 2 training samples")
    victim_cfg = victim_cfg.resolved()
    device = pick_device(victim_cfg.device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_raw = to_tensor(images, device)
    mean = x_raw.mean((0, 2, 3), keepdim=True)
    std = x_raw.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
    x = (x_raw - mean) / std
    del x_raw
    y = torch.from_numpy(np.asarray(labels, np.int64)).to(device)

    det = _Detector(cfg, new_net(victim_cfg, num_classes, x, device), x, y, gen)
    suspicious_warmup = warm_up(cfg, det, progress)
    if stop_after_warmup:
        return {"victim": None, "suspicious_warmup": suspicious_warmup, "suspicious": suspicious_warmup, "epochs": 0}

    ben = new_net(victim_cfg, num_classes, x, device)
    params = [p for p in ben.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    epochs, suppress, switch = cfg.scaled(cfg.epochs), cfg.scaled(cfg.suppress_from), cfg.scaled(cfg.lambda_switch)
    milestones = [cfg.scaled(m) for m in cfg.milestones]
    refresh = max(1, cfg.scaled(cfg.refresh_every))
    suspicious = suspicious_warmup
    labeller = PseudoLabeller()
    if cfg.pseudo_align:  # prior: label frequencies of the credible samples after warm-up
        labeller = PseudoLabeller(torch.bincount(y[torch.from_numpy(np.flatnonzero(~suspicious)).to(device)],
                                                 minlength=num_classes).float().div_(max(int((~suspicious).sum()), 1)))
    bar = tqdm(range(1, epochs + 1), desc=f"V&B beneficiary {victim_cfg.arch}", disable=not progress, leave=False)
    for epoch in bar:
        semi = epoch > suppress
        lam = cfg.lambda1 if epoch <= switch else cfg.lambda2

        def lr_at(frac: float, epoch: int = epoch) -> float:  # frac: progress through this epoch
            if cfg.lr_schedule == "step":  # MultiStepLR, stepped once per finished epoch
                return cfg.lr * cfg.lr_gamma ** sum(m <= epoch - 1 for m in milestones)
            t = (epoch - 1 + frac) / epochs
            return cfg.lr * (t / 0.2 if t < 0.2 else (1 - t) / 0.8)

        loss = _beneficiary_epoch(cfg, ben, opt, x, y, num_classes, suspicious, det if semi else None, lam, gen,
                                  lr_at, labeller)
        if epoch % refresh == 0 or semi:
            det.train_suspicious()
            suspicious = det.rescore(cfg.threshold).copy()
        bar.set_postfix(loss=f"{loss:.3f}", suspicious=int(suspicious.sum()), semi=semi)
    if cfg.bn_recalibrate:
        recalibrate_bn(ben, x[torch.from_numpy(np.flatnonzero(~suspicious)).to(device)], cfg.batch_size)
    victim = Victim(ben, mean, std, device, tta=victim_cfg.tta or 0)  # airbench's test-time augmentation
    return {"victim": victim, "suspicious_warmup": suspicious_warmup,
            "suspicious": suspicious, "epochs": epochs}
