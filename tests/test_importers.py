"""Importers for foreign poison formats and the restricted unpickler: exact round trips, refusals, no writes on error."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eclipse_ray.cli import main
from eclipse_ray.config import ConfigError
from eclipse_ray.data import safe_pickle
from eclipse_ray.data.importers import IMPORTERS, import_poisons
from eclipse_ray.data.sources import load_dataset

N_TRAIN, N_TEST, SIZE, N_CLS = 40, 12, 16, 4


def make_sentinel(path: str) -> None:
    Path(path).write_text("pwned")


class CallsFunction:
    """Unpickling runs ``make_sentinel(path)`` — a stand-in for any attacker code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (make_sentinel, (self.path,))


class CallsSystem(CallsFunction):
    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


PAYLOADS = [CallsFunction, CallsSystem]


@pytest.fixture()
def clean(tmp_path):
    """A small synthetic clean dataset as ``npz:`` (position == index)."""
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (N_TRAIN, SIZE, SIZE, 3), dtype=np.uint8),
                  y_train=np.arange(N_TRAIN) % N_CLS,
                  x_test=rng.integers(0, 256, (N_TEST, SIZE, SIZE, 3), dtype=np.uint8),
                  y_test=np.arange(N_TEST) % N_CLS)
    np.savez(tmp_path / "clean.npz", **arrays)
    return f"npz:{tmp_path / 'clean.npz'}", arrays


def perturb(x: np.ndarray, seed: int) -> np.ndarray:
    d = np.random.default_rng(seed).integers(-8, 9, x.shape)
    return np.clip(x.astype(int) + d, 0, 255).astype(np.uint8)


def dump(obj, path: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def assert_refused(fn, sentinel: Path, match: str = "refusing to unpickle"):
    with pytest.raises(ConfigError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    assert not sentinel.exists(), "the malicious pickle ran code"


# ---------------------------------------------------------------- restricted unpickler


def test_payloads_really_run_code_under_plain_pickle(tmp_path):
    sentinel = tmp_path / "plain"
    pickle.loads(pickle.dumps(CallsFunction(sentinel)))  # proves the refusal tests below can fail
    assert sentinel.exists()


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_safe_pickle_round_trips_plain_data(protocol):
    rgb = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    obj = [Image.fromarray(rgb), Image.fromarray(rgb).convert("P"), np.arange(6.0).reshape(2, 3).T,
           np.int64(7), np.float32(0.5), np.dtype("<u2"), OrderedDict(a=1), {1, 2}, frozenset({3}), b"\x00\xff",
           bytearray(b"ab"), (1, 2.5, "x", None, True, 1 + 2j), {"k": [np.zeros(2, bool)]}]
    out = safe_pickle.loads(pickle.dumps(obj, protocol=protocol))
    assert isinstance(out[0], Image.Image) and np.array_equal(np.asarray(out[0]), rgb)
    assert np.array_equal(np.asarray(out[1].convert("RGB")), np.asarray(obj[1].convert("RGB")))
    assert np.array_equal(out[2], obj[2]) and out[3] == 7 and out[4] == np.float32(0.5) and out[5] == obj[5]
    assert out[6:12] == obj[6:12] and np.array_equal(out[12]["k"][0], obj[12]["k"][0])


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("protocol", (0, 2, pickle.HIGHEST_PROTOCOL))
def test_safe_pickle_refuses_code(tmp_path, payload, protocol):
    sentinel = tmp_path / "sentinel"
    data = pickle.dumps([1, {"x": payload(sentinel)}], protocol=protocol)
    assert_refused(lambda: safe_pickle.loads(data, "evil.pkl"), sentinel)
    with pytest.raises(ConfigError, match=r"posix\.system|make_sentinel"):
        safe_pickle.loads(data)


def test_safe_pickle_names_the_refused_global():
    with pytest.raises(ConfigError, match=r"evil\.pkl: it references builtins\.eval, which .* could run code"):
        safe_pickle.loads(b"cbuiltins\neval\n(S'1'\ntR.", "evil.pkl")
    with pytest.raises(ConfigError, match="only latin-1"):
        safe_pickle.loads(b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.")


def test_safe_pickle_bad_files(tmp_path):
    good = pickle.dumps([np.arange(100)] * 3)
    for bad in (good[: len(good) // 2], b"not a pickle at all", b""):
        with pytest.raises(ConfigError, match="not a valid pickle"):
            safe_pickle.loads(bad, "x.pkl")
    with pytest.raises(ConfigError, match="no such file"):
        safe_pickle.load(tmp_path / "missing.pkl")
    with pytest.raises(ConfigError, match="implausible size"):
        safe_pickle.loads(b"\x80\x02cPIL.Image\nImage\n)\x81]q\x00(}X\x03\x00\x00\x00RGBK\x00K\x02\x86N"
                          b"C\x00eb.")


def test_load_torch_admits_numpy_and_pil_refuses_code(tmp_path):
    im = Image.fromarray(np.full((3, 3, 3), 9, np.uint8))
    torch.save({"a": np.arange(4), "t": torch.ones(2), "d": {np.int64(1): (im, 0, 2)}}, tmp_path / "ok.pt")
    out = safe_pickle.load_torch(tmp_path / "ok.pt")
    assert np.array_equal(out["a"], np.arange(4)) and np.array_equal(np.asarray(out["d"][1][0]), np.asarray(im))
    for payload in PAYLOADS:
        sentinel = tmp_path / f"s-{payload.__name__}"
        torch.save({"a": [payload(sentinel)]}, tmp_path / "evil.pt")
        assert_refused(lambda: safe_pickle.load_torch(tmp_path / "evil.pt"), sentinel)
    (tmp_path / "junk.pt").write_bytes(b"junk" * 20)
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    for name in ("junk.pt", "cut.pt"):
        with pytest.raises(ConfigError, match="not a readable torch file"):
            safe_pickle.load_torch(tmp_path / name)


# ---------------------------------------------------------------- APBench


def write_apbench(folder: Path, images: np.ndarray, rows) -> Path:
    (folder / "data").mkdir(parents=True)
    for r in rows:
        Image.fromarray(images[r]).save(folder / "data" / f"{r}.png")
    return folder


def test_apbench_full_set_round_trips(tmp_path, clean):
    spec, a = clean
    poisoned = perturb(a["x_train"], 1)
    root = write_apbench(tmp_path / "ar_poisons" / "c10", poisoned, range(N_TRAIN))
    d = import_poisons("apbench", root, spec)
    assert np.array_equal(d.train.images, poisoned) and np.array_equal(d.train.labels, a["y_train"])
    assert d.train.poisoned.all() and np.array_equal(d.train.index, np.arange(N_TRAIN))
    assert np.array_equal(d.test.images, a["x_test"]) and np.array_equal(d.splits["originals"].images, a["x_train"])
    assert d.meta["attack_kind"] == "availability"
    assert np.array_equal(import_poisons("apbench", root / "data", spec).train.images, poisoned)
    with pytest.raises(ConfigError, match="--clean"):
        import_poisons("apbench", root, None)


def test_apbench_partial_on_digits_maps_positions_to_index(tmp_path, digits):
    rows = [0, 5, 100, len(digits.train) - 1]
    poisoned = perturb(digits.train.images, 2)
    root = write_apbench(tmp_path / "ap", poisoned, rows)
    d = import_poisons("apbench", root, "digits")
    assert np.array_equal(np.flatnonzero(d.train.poisoned), rows)
    assert np.array_equal(d.train.index, digits.train.index) and np.array_equal(d.train.labels, digits.train.labels)
    assert np.array_equal(d.train.images[rows], poisoned[rows])
    keep = np.setdiff1d(np.arange(len(digits.train)), rows)
    assert np.array_equal(d.train.images[keep], digits.train.images[keep])
    assert np.array_equal(d.splits["originals"].index, digits.train.index[rows])


@pytest.mark.parametrize("name, content, match", [
    ("notes.txt", b"x", "unexpected file"),
    ("9999.png", None, "beyond the clean training set"),
    ("3.png", b"\x89PNG\r\n\x1a\n truncated", "cannot read image"),
])
def test_apbench_bad_folders(tmp_path, clean, name, content, match):
    spec, a = clean
    root = write_apbench(tmp_path / "ap", a["x_train"], [0, 1])
    if content is None:
        Image.fromarray(a["x_train"][0]).save(root / "data" / name)
    else:
        (root / "data" / name).write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        import_poisons("apbench", root, spec)


# ---------------------------------------------------------------- "Just how toxic"


def write_toxic(folder: Path, a: dict, base, target_row: int, patch=None) -> tuple[Path, np.ndarray]:
    folder.mkdir(parents=True)
    crafted = perturb(a["x_train"][base], 3)
    adv = int(a["y_train"][base[0]])
    dump([(Image.fromarray(x), adv) for x in crafted], folder / "poisons.pickle")
    dump(np.asarray(base), folder / "base_indices.pickle")
    target = (Image.fromarray(a["x_test"][target_row]), int(a["y_test"][target_row]))
    dump(target if patch is None else (*target, patch, (1, 2)), folder / "target.pickle")
    return folder, crafted


def test_toxic_trial_round_trips(tmp_path, clean):
    spec, a = clean
    base = [1, 5, 9]  # class 1
    root, crafted = write_toxic(tmp_path / "trial", a, base, target_row=2)
    d = import_poisons("toxic", root, spec)
    assert np.array_equal(d.train.images[base], crafted) and np.array_equal(np.flatnonzero(d.train.poisoned), base)
    others = np.setdiff1d(np.arange(N_TRAIN), base)
    assert np.array_equal(d.train.images[others], a["x_train"][others])
    assert np.array_equal(d.train.labels, a["y_train"]) and np.array_equal(d.train.index, np.arange(N_TRAIN))
    t = d.splits["targets"]
    assert np.array_equal(t.images[0], a["x_test"][2]) and t.labels[0] == a["y_test"][2] and t.index[0] == 2
    assert t.meta["adv_labels"] == [1] == d.meta["adv_labels"] and d.meta["attack_kind"] == "targeted"
    assert len(d.test) == N_TEST - 1 and 2 not in d.test.index
    assert d.meta["max_linf"] <= 8 / 255 + 1e-9 and np.array_equal(d.splits["originals"].images, a["x_train"][base])


def test_toxic_subset_and_patched_target(tmp_path, clean):
    spec, a = clean
    base = [1, 5]
    patch = np.ones((3, 2, 2), np.float32)
    root, _ = write_toxic(tmp_path / "trial", a, base, target_row=3, patch=patch)
    d = import_poisons("toxic", root, spec, trainset_size=20)
    assert len(d.train) == 20 and d.train.poisoned.sum() == 2
    assert np.bincount(d.train.labels, minlength=N_CLS).tolist() == [5, 5, 5, 5]
    img = d.splits["targets"].images[0]
    assert (img[2:4, 1:3] == 255).all() and d.splits["targets"].index[0] == -1  # patched: no test image matches
    with pytest.raises(ConfigError, match="trainset-size"):
        import_poisons("toxic", root, spec, trainset_size=1)


@pytest.mark.parametrize("file", ["poisons.pickle", "base_indices.pickle", "target.pickle"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_toxic_refuses_malicious_pickles(tmp_path, clean, file, payload):
    spec, a = clean
    root, _ = write_toxic(tmp_path / "trial", a, [1, 5], target_row=2)
    sentinel = tmp_path / "sentinel"
    dump([payload(sentinel)], root / file)
    assert_refused(lambda: import_poisons("toxic", root, spec), sentinel)
    out = tmp_path / "out"
    assert main(["import", "toxic", str(root), "--clean", spec, "--out", str(out), "--quiet"]) == 2
    assert not out.exists() and not sentinel.exists()


def test_toxic_truncated_and_mismatched(tmp_path, clean):
    spec, a = clean
    root, _ = write_toxic(tmp_path / "trial", a, [1, 5], target_row=2)
    data = (root / "poisons.pickle").read_bytes()
    (root / "poisons.pickle").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="not a valid pickle"):
        import_poisons("toxic", root, spec)
    dump([(Image.fromarray(a["x_train"][1]), 1)], root / "poisons.pickle")
    with pytest.raises(ConfigError, match="1 poisons but 2 base indices"):
        import_poisons("toxic", root, spec)


# ---------------------------------------------------------------- BackdoorBench


def bb_state(order, indicator, data_dict, folder=None):
    return {"bd_data_container": {"save_folder_path": folder, "data_dict": data_dict, "save_file_format": ".png"},
            "getitem_all": True, "getitem_all_switch": False, "original_index_array": np.asarray(order),
            "poison_indicator": np.asarray(indicator, dtype=np.float64), "save_folder_path": folder}


def write_backdoorbench(rec: Path, a: dict, on_disk: bool, target: int = 0):
    """A record as BackdoorBench's save_attack_result writes it (all-to-one, target 0)."""
    rec.mkdir(parents=True)
    tr_rows = [2, 3, 6, 11]
    te_rows = np.flatnonzero(a["y_test"] != target)
    tr_imgs, te_imgs = perturb(a["x_train"], 4), perturb(a["x_test"], 5)
    states = {}
    for name, rows, imgs, labels, n in (("bd_train", tr_rows, tr_imgs, a["y_train"], N_TRAIN),
                                        ("bd_test", te_rows, te_imgs, a["y_test"], N_TEST)):
        entries, folder = {}, f"./record/badnet/{name}_dataset" if on_disk else None
        for r in rows:
            if on_disk:
                sub = rec / f"{name}_dataset" / str(labels[r])
                sub.mkdir(parents=True, exist_ok=True)
                Image.fromarray(imgs[r]).save(sub / f"{r}.png")
                entries[np.int64(r)] = {"path": f"{folder}/{labels[r]}/{r}.png", "other_info": [target, int(labels[r])]}
            else:
                entries[np.int64(r)] = (Image.fromarray(imgs[r]), target, int(labels[r]))
        indicator = np.isin(np.arange(n), rows).astype(int)
        order = np.arange(n) if name == "bd_train" else np.asarray(rows)
        states[name] = bb_state(order, indicator, entries, folder)
    torch.save({"model_name": "preactresnet18", "num_classes": N_CLS, "model": {"w": torch.zeros(2)},
                "data_path": "./data", "img_size": [SIZE, SIZE, 3], "clean_data": "synthetic", **states},
               rec / "attack_result.pt")
    return tr_rows, te_rows, tr_imgs, te_imgs


@pytest.mark.parametrize("on_disk", [False, True])
def test_backdoorbench_record_round_trips(tmp_path, clean, on_disk):
    spec, a = clean
    rec = tmp_path / "record" / "badnet"
    tr_rows, te_rows, tr_imgs, te_imgs = write_backdoorbench(rec, a, on_disk)
    d = import_poisons("backdoorbench", rec, spec)
    assert np.array_equal(np.flatnonzero(d.train.poisoned), tr_rows)
    assert np.array_equal(d.train.images[tr_rows], tr_imgs[tr_rows]) and (d.train.labels[tr_rows] == 0).all()
    clean_rows = np.setdiff1d(np.arange(N_TRAIN), tr_rows)
    assert np.array_equal(d.train.images[clean_rows], a["x_train"][clean_rows])
    assert np.array_equal(d.train.labels[clean_rows], a["y_train"][clean_rows])
    trig = d.splits["test_triggered"]
    assert np.array_equal(trig.index, te_rows) and np.array_equal(trig.images, te_imgs[te_rows])
    assert np.array_equal(trig.labels, a["y_test"][te_rows]) and trig.meta["target"] == 0
    assert d.meta["target"] == 0 and d.meta["attack_kind"] == "backdoor"
    assert np.array_equal(d.test.images, a["x_test"])


def test_backdoorbench_errors(tmp_path, clean):
    spec, a = clean
    rec = tmp_path / "rec"
    write_backdoorbench(rec, a, on_disk=True)
    with pytest.raises(ConfigError, match="not one eclipse_ray knows; pass --clean"):
        import_poisons("backdoorbench", rec, None)
    for png in (rec / "bd_train_dataset").rglob("2.png"):
        png.unlink()
    with pytest.raises(ConfigError, match="not found"):
        import_poisons("backdoorbench", rec, spec)
    record = safe_pickle.load_torch(rec / "attack_result.pt")
    record["bd_train"]["bd_data_container"]["data_dict"][np.int64(2)]["path"] = "../../../etc/passwd"
    torch.save(record, rec / "attack_result.pt")
    with pytest.raises(ConfigError, match="not <folder>/<label>/<index>.png"):
        import_poisons("backdoorbench", rec, spec)
    sentinel = tmp_path / "sentinel"
    record["bd_train"]["bd_data_container"]["data_dict"][np.int64(2)] = CallsFunction(sentinel)
    torch.save(record, rec / "attack_result.pt")
    assert_refused(lambda: import_poisons("backdoorbench", rec, spec), sentinel)
    (rec / "attack_result.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConfigError, match="not a readable torch file"):
        import_poisons("backdoorbench", rec / "attack_result.pt", spec)


# ---------------------------------------------------------------- ECLIPSE


def test_eclipse_pickle_round_trips(tmp_path, clean):
    spec, a = clean
    poisoned = perturb(a["x_train"], 6)
    path = dump([(Image.fromarray(x).tobytes(), int(y)) for x, y in zip(poisoned, a["y_train"])], tmp_path / "EM.pkl")
    d = import_poisons("eclipse", path, spec)
    assert np.array_equal(d.train.images, poisoned) and np.array_equal(d.train.labels, a["y_train"])
    assert d.train.poisoned.all() and d.meta["aligned"] and np.array_equal(d.splits["originals"].images, a["x_train"])
    perm = np.random.default_rng(0).permutation(N_TRAIN)
    path = dump([(poisoned[i].tobytes(), int(a["y_train"][i])) for i in perm], tmp_path / "EM-pure.pkl")
    d = import_poisons("eclipse", path, spec)
    assert not d.meta["aligned"] and "originals" not in d.splits
    assert np.array_equal(d.train.images, poisoned[perm]) and np.array_equal(d.train.labels, a["y_train"][perm])


def test_eclipse_refuses_code_and_bad_rows(tmp_path, clean):
    spec, a = clean
    for payload in PAYLOADS:
        sentinel = tmp_path / f"s-{payload.__name__}"
        path = dump([(b"\x00" * 768, 0), payload(sentinel)], tmp_path / "evil.pkl", protocol=2)
        assert_refused(lambda: import_poisons("eclipse", path, spec), sentinel)
    path = dump([(b"\x00" * 100, 0)], tmp_path / "short.pkl")
    with pytest.raises(ConfigError, match="100 image bytes, expected 768"):
        import_poisons("eclipse", path, spec)
    path = dump([(b"\x00" * 768, 7)], tmp_path / "label.pkl")
    with pytest.raises(ConfigError, match="label 7 outside 0..3"):
        import_poisons("eclipse", path, spec)


# ---------------------------------------------------------------- npz


def test_npz_poisons_round_trip(tmp_path, clean):
    _, a = clean
    x = perturb(a["x_train"], 7)
    mask = np.arange(N_TRAIN) % 5 == 0
    trig = perturb(a["x_test"], 8)
    np.savez(tmp_path / "p.npz", **{**a, "x_train": x, "x_train_clean": a["x_train"], "poisoned": mask,
                                    "x_test_triggered": trig, "target": np.int64(2)})
    d = import_poisons("npz", tmp_path / "p.npz")
    assert np.array_equal(d.train.images, x) and np.array_equal(d.train.poisoned, mask)
    assert np.array_equal(d.splits["originals"].images, a["x_train"][mask])
    assert np.array_equal(d.splits["test_triggered"].images, trig) and d.meta["target"] == 2
    assert d.meta["attack_kind"] == "backdoor"
    sentinel = tmp_path / "sentinel"
    np.savez(tmp_path / "evil.npz", **{**a, "poisoned": np.array([CallsFunction(sentinel)], dtype=object)})
    with pytest.raises(ConfigError, match="pickled objects are refused"):
        import_poisons("npz", tmp_path / "evil.npz")
    assert not sentinel.exists()
    np.savez(tmp_path / "bad.npz", **{**a, "poisoned": np.ones(3, bool)})
    with pytest.raises(ConfigError, match="'poisoned' must be 40 booleans"):
        import_poisons("npz", tmp_path / "bad.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "p.npz").read_bytes()[:100])
    with pytest.raises(ConfigError, match="not a valid .npz"):
        import_poisons("npz", tmp_path / "cut.npz")


# ---------------------------------------------------------------- CLI and use in a trial


def test_cli_import_writes_a_loadable_dataset_and_refuses_bad_input(tmp_path, clean, capsys):
    spec, a = clean
    rec = tmp_path / "rec"
    write_backdoorbench(rec, a, on_disk=False)
    out = tmp_path / "imported"
    assert main(["import", "backdoorbench", str(rec), "--clean", spec, "--out", str(out), "--quiet"]) == 0
    direct = import_poisons("backdoorbench", rec, spec)
    for loaded in (load_dataset(f"parquet:{out}"), load_dataset(str(out))):
        assert set(loaded.splits) == set(direct.splits)
        for name, s in direct.splits.items():
            for field in ("images", "labels", "index", "poisoned"):
                assert np.array_equal(getattr(loaded.splits[name], field), getattr(s, field)), (name, field)
        assert loaded.meta["target"] == 0 and loaded.meta["attack_kind"] == "backdoor"
    capsys.readouterr()
    assert main(["import", "backdoorbench", str(rec), "--clean", spec, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    bad_out = tmp_path / "never"
    assert main(["import", "apbench", str(tmp_path / "missing"), "--clean", spec, "--out", str(bad_out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eclipse-ray: error:") and err.count("\n") == 1 and not bad_out.exists()
    assert main(["import", "eclipse", str(rec / "attack_result.pt"), "--clean", spec, "--out", str(bad_out),
                 "--trainset-size", "5"]) == 2
    assert "does not apply" in capsys.readouterr().err and not bad_out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_cli_formats_match_the_registry():
    from eclipse_ray.cli import parser

    action = next(a for a in parser()._subparsers._group_actions[0].choices["import"]._actions
                  if a.dest == "format")
    assert set(action.choices) == set(IMPORTERS)


def test_imported_backdoor_runs_as_a_trial(tmp_path, clean):
    from eclipse_ray.trial import build_config, run_trial

    spec, a = clean
    rec = tmp_path / "rec"
    write_backdoorbench(rec, a, on_disk=False)
    out = tmp_path / "imported"
    assert main(["import", "backdoorbench", str(rec), "--clean", spec, "--out", str(out), "--quiet"]) == 0
    cfg = build_config(str(out), overrides={"victim.epochs": "1", "victim.width": "8", "victim.device": "cpu"})
    row = run_trial(cfg, reference=False, progress=False)
    assert row["n_poisoned"] == 4 and row["attack.kind"] == "backdoor" and 0.0 <= row["asr"] <= 1.0
