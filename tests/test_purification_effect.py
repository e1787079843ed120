"""A tiny DDPM trained briefly on clean digits lowers a poison's effect on a fast victim.

About two minutes on 2 cores: it runs with the heavy tests (``pytest -m heavy``, as CI does), which keeps
the default run under ten minutes."""

from __future__ import annotations

import pytest

from eclipse_ray.trial import build_config, run_trial

from conftest import QUICK_VICTIM


@pytest.mark.heavy
def test_briefly_trained_tiny_ddpm_undoes_lsp(tmp_path, monkeypatch):
    monkeypatch.setenv("ECLIPSE_RAY_CACHE", str(tmp_path / "cache"))
    base = {**QUICK_VICTIM, "defense.train.iterations": "40", "defense.sigma": "0.1"}
    poisoned = run_trial(build_config("digits", "lsp", "none", QUICK_VICTIM), progress=False, reference=False)
    purified = run_trial(build_config("digits", "lsp", "denoise", base), progress=False, reference=False)
    assert purified["defense.t_star"] > 0 and purified["defense.sigma"] >= 0.1
    assert purified["test_acc"] > poisoned["test_acc"] + 0.3
    # the auto-trained model is cached: the ECLIPSE trial below reuses it (same recipe and clean set)
    models = [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()]
    assert len(models) == 1 and (models[0] / "diffusion_pytorch_model.safetensors").is_file()
    eclipse = run_trial(build_config("digits", "lsp", "eclipse", {**base, "defense.sampler": "oneshot"}),
                        progress=False, reference=False)
    assert [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()] == models
    assert eclipse["test_acc"] > poisoned["test_acc"] + 0.3
