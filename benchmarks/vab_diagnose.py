"""Where V&B's clean accuracy goes: one run with its per-epoch trace (CPU, CIFAR subset).

Evidence behind the short-run settings in ``benchmarks/vab_quality.py`` and the
deviations in ``eclipse_ray/defenses/vab.py``. One V&B run (width-16 fast net,
rate 0.1, target 0) prints one JSON line with

* ``trace``: the Beneficiary's test accuracy after every epoch — a diagnostic
  only; the reported model is always the last epoch's (no selection on test);
* ``acc``, ``asr``, ``per_class`` of the final model, and the split's
  ``precision`` / ``recall`` / ``flagged`` share against the true poisons;
* ``pseudo_hist``: the final Beneficiary's predictions on the suspicious
  samples (one class taking them all = self-training on a bias);
  ``test_pred_hist``: its predictions on the test set; ``triggered_hist``: on
  the triggered test images (a trigger re-routed to another class shows here,
  not in the ASR);
* ``victim_p_target``: mean softmax(Victim/T) of the target class on the
  poisons for T = 1 and 3 (how much the suppression subtracts).

Usage:  python benchmarks/vab_diagnose.py ATTACK SEED [defense.KEY=VALUE ...]
        e.g. python benchmarks/vab_diagnose.py badnets 0 defense.epoch_scale=0.05 defense.lambda2=0.5
(defaults: ``epoch_scale`` 0.05 and vab_quality's CPU settings; ≈ 2.5 min at 10 epochs on one thread)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from eclipse_ray.defenses import vab
from eclipse_ray.trial import build_config, prepare
from eclipse_ray.tensors import to_tensor

sys.path.insert(0, str(Path(__file__).parent))
from vab_quality import CPU_SETTINGS  # noqa: E402


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    attack, seed = sys.argv[1], int(sys.argv[2])
    sets = {"defense.epoch_scale": "0.05", **dict(kv.split("=", 1) for kv in CPU_SETTINGS),
            **dict(kv.split("=", 1) for kv in sys.argv[3:]),
            "seed": str(seed), "attack.rate": "0.1", "attack.target": "0", "victim.width": "16"}
    cfg = build_config("cifar10-subset", attack, "vab", sets)
    data = prepare(cfg)
    train, test = data.train, data.test
    raw = to_tensor(train.images, torch.device("cpu"))
    mean, std = raw.mean((0, 2, 3), keepdim=True), raw.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
    x_test = (to_tensor(test.images, torch.device("cpu")) - mean) / std
    del raw

    trace: list[float] = []
    detectors: list[vab._Detector] = []
    epoch_fn, detector_init = vab._beneficiary_epoch, vab._Detector.__init__

    def epoch_traced(cfg_, ben, *args, **kwargs):  # noqa: ANN001, ANN202
        loss = epoch_fn(cfg_, ben, *args, **kwargs)
        ben.eval()
        with torch.no_grad():
            pred = torch.cat([ben(x_test[i:i + 512]) for i in range(0, len(x_test), 512)]).argmax(1).numpy()
        ben.train()
        trace.append(round(float((pred == test.labels).mean()), 3))
        return loss

    def detector_kept(self, *args, **kwargs):  # noqa: ANN001, ANN202
        detector_init(self, *args, **kwargs)
        detectors.append(self)

    vab._beneficiary_epoch, vab._Detector.__init__ = epoch_traced, detector_kept
    t = time.perf_counter()
    out = vab.train_vab(cfg.defense, cfg.victim, train.images, train.labels, train.num_classes, seed,
                        progress=False)
    seconds = time.perf_counter() - t
    ben, det = out["victim"], detectors[0]
    pred = ben.predict(test.images)
    suspicious = out["suspicious"]
    det.net.eval()
    with torch.no_grad():
        z = det.net(det.x[torch.from_numpy(np.flatnonzero(train.poisoned))]).float()
    q = vab.split_quality(suspicious, train.poisoned, "")
    print(json.dumps({
        "attack": attack, "seed": seed, "sets": sys.argv[3:], "trace": trace,
        "acc": round(float((pred == test.labels).mean()), 4),
        "asr": round(float((ben.predict(data.splits["test_triggered"].images) == 0).mean()), 4),
        "per_class": [round(float((pred[test.labels == c] == c).mean()), 2) for c in range(train.num_classes)],
        "precision": round(q["precision"], 3), "recall": round(q["recall"], 3), "flagged": round(q["suspicious"], 3),
        "pseudo_hist": np.bincount(ben.predict(train.images[suspicious]), minlength=train.num_classes).tolist(),
        "test_pred_hist": np.bincount(pred, minlength=train.num_classes).tolist(),
        "triggered_hist": np.bincount(ben.predict(data.splits["test_triggered"].images),
                                      minlength=train.num_classes).tolist(),
        "victim_p_target": {f"T={t}": round(float(torch.softmax(z / t, 1)[:, 0].mean()), 3) for t in (1, 3)},
        "seconds": round(seconds)}), flush=True)


if __name__ == "__main__":
    main()
