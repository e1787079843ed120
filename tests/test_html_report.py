"""``report.html``: self-contained, every varying setting a column, datasets named without paths, image strips
from the stored datasets, and it works in a real browser (headless Chromium: plots, table, sort, filter)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eclipse_ray.data.sources import load_digits
from eclipse_ray.distributed.artifacts import make_poison
from eclipse_ray.distributed.study import compile_plan
from eclipse_ray.distributed.tune import run_spec, spec
from eclipse_ray.results.report import write_report

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three real trials (rows and stored datasets) on a digits copy kept in an .npz under a temp path."""
    tmp = tmp_path_factory.mktemp("html")
    d = load_digits()
    npz = tmp / "somewhere" / "deep" / "mydigits.npz"
    npz.parent.mkdir(parents=True)
    np.savez(npz, x_train=d.train.images, y_train=d.train.labels, x_test=d.test.images, y_test=d.test.labels)
    base = {"victim.epochs": "1", "victim.width": "8", "seed": "0"}
    study, cache = tmp / "study", tmp / "study" / ".cache"
    specs = [spec(f"npz:{npz}", attack, defense, {**base, **extra}) for attack, defense, extra in (
        ("badnets", "jpeg", {"attack.rate": "0.05"}), ("badnets", "jpeg", {"attack.rate": "0.2"}), ("lsp", "none", {}))]
    for planned in compile_plan(specs).poisons.values():  # the study's poisons stage, in-process
        make_poison(planned, str(cache), None)
    for s in specs:
        run_spec(s, str(study), str(cache))
    write_report(study)
    return tmp, study


@pytest.mark.slow
def test_report_names_every_varying_setting_and_no_path(study):
    tmp, study = study
    md, page = (study / "report.md").read_text(), (study / "report.html").read_text()
    assert "attack.rate" in md.splitlines()[6]  # the summary table's header: the two rates are told apart
    assert str(tmp) not in md and str(tmp) not in page and "/somewhere/" not in page
    assert re.search(r"mydigits\.npz@[0-9a-f]{8}", page)
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\((https?:|//)""", page)
    assert page.count("<svg") == 2 and page.count('<img alt="') == 3  # Pareto per attack; a strip per config
    assert page.count("data:image/png;base64,") == 3
    assert "badnets · jpeg attack.rate=0.05" in page and "badnets · jpeg attack.rate=0.2" in page


def test_labels_keep_different_datasets_apart(tmp_path):
    import pandas as pd

    from eclipse_ray.data.sources import load_dataset
    from eclipse_ray.data.store import write_dataset
    from eclipse_ray.results.html import labelled

    df = pd.DataFrame({"dataset": ["folder:/a/train", "folder:/b/train", "folder:/a/train", "digits"],
                       "attack.name": "lsp"})
    names = labelled(df)["dataset"].tolist()
    assert names[0] == names[2] != names[1] and names[0].startswith("train~") and names[3] == "digits"
    assert labelled(labelled(df))["dataset"].tolist() == names  # idempotent
    # a dataset directory is fingerprinted by its own content, not by the source it was made from
    d = load_digits()
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=d.train.images, y_train=d.train.labels, x_test=d.test.images, y_test=d.test.labels)
    src = load_dataset(f"npz:{npz}")
    write_dataset(tmp_path / "copy", src.splits, src.meta)
    copy = load_dataset(f"parquet:{tmp_path / 'copy'}")
    assert copy.meta["fingerprint"] != src.meta["fingerprint"] and len(copy.meta["fingerprint"]) == 64


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no Chromium (Debian: apt-get install chromium)")
def test_report_renders_in_a_headless_browser(study):
    _, study = study
    url = (study / "report.html").as_uri()

    def dom(fragment: str) -> tuple[str, str]:
        p = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                            "--v=0", "--virtual-time-budget=5000", "--dump-dom", f"{url}#{fragment}"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout, p.stderr

    page, log = dom("filter=badnets&sort=attack.rate&desc=1")
    assert 'data-ready="1"' in page and "data-error" not in page  # the script ran to its end, no error
    assert not re.search(r"Uncaught|CONSOLE.*[Ee]rror", log)
    assert 'id="count">2 of 3 rows' in page  # filtered
    table = page[page.index('id="summary"'):]
    body = table[table.index("<tbody>"):table.index("</tbody>")]
    rates = re.findall(r"<tr><td>[^<]*</td><td>badnets</td><td>jpeg</td><td>([0-9.]+)</td>", body)
    assert rates == ["0.2", "0.05"]  # sorted, descending
    assert 'class="desc"' in page and page.count("<circle") == 3
    page, _ = dom("sort=test_acc_mean")
    assert 'id="count">3 of 3 rows' in page and 'class="asc"' in page
    shot = study / "report.png"
    subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
                    f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000 and Path(shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_content_under_two_names_gets_the_named_sources_label():
    """Rows of the subset read by path (``npz:…/cifar10_subset.npz``) and as the named source
    ``cifar10-subset`` carry the same fingerprint: reports show them as one dataset, by its name."""
    import pandas as pd

    from eclipse_ray.results.html import labelled

    df = pd.DataFrame({"dataset": ["npz:/work/shared/data/cifar10_subset.npz", "cifar10-subset", "npz:/x/other.npz",
                                   "npz:/y/other.npz"],
                       "dataset_label": ["cifar10_subset.npz@b407fc95", "cifar10-subset@b407fc95", "other.npz@0123abcd",
                                         "copy.npz@0123abcd"],
                       "attack.name": "lsp"})
    assert labelled(df)["dataset"].tolist() == ["cifar10-subset@b407fc95"] * 2 + ["copy.npz@0123abcd"] * 2
    assert labelled(df.iloc[:1])["dataset"].tolist() == ["cifar10-subset@b407fc95"]  # by its published fingerprint
