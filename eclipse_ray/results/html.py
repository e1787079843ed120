"""``report.html``: a results store as one self-contained page (no network: inline CSS, JS, SVG and PNG).

* Pareto plots per (dataset, attack): every seed-aggregated configuration as a
  point, the frontier joined; hovering a point shows its configuration (every
  setting that varies in the study, σ), its seeds and its cost.
* The seed-summary table, sortable (click a header) and filterable (type in the
  box); the view is kept in the URL (``report.html#filter=lsp&sort=test_acc_mean&desc=1``).
* σ curves (accuracy against the noise level) where a study sweeps σ.
* For every (attack, defense) an image strip: the same training samples poisoned,
  purified and clean, read from the study's stored datasets (the cache).
* The study's cost: trials, purifications computed and reused, seconds per device.

Every setting that varies within one (dataset, attack, defense) is a column of
the table and part of each point's label; datasets are named by
:func:`eclipse_ray.data.sources.dataset_label`, never by a machine's path.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from typing import Any

import numpy as np
import pandas as pd

from eclipse_ray import storage
from eclipse_ray.data.cache import study_cache
from eclipse_ray.data.sources import FINGERPRINTED, SHIPPED_SHA256, short_name
from eclipse_ray.data.store import is_dataset, read_meta, read_rows
from eclipse_ray.result_store import METRIC_NAMES
from eclipse_ray.results.columns import config_strings, with_added_defaults
from eclipse_ray.results.pareto import config_columns, pareto, summarize

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")
W, H, PAD = 420, 300, 46  # one plot panel, px


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``dataset`` replaced by its portable label (``dataset_label`` where rows carry it)."""
    df = df.copy()
    if "dataset" in df:
        raw = df["dataset"].astype(str)
        short = raw.map(short_name)
        label = df["dataset_label"].fillna(short) if "dataset_label" in df else short
        label = label.map(_one_name_per_content(set(label)))
        pairs = pd.DataFrame({"raw": raw, "label": label}).drop_duplicates()
        # two datasets, one name and no fingerprint to tell them apart: keep them apart (one fingerprint is one content)
        clash = pairs["label"].duplicated(keep=False) & ~pairs["label"].str.match(FINGERPRINTED)
        fix = {r: f"{lab}~{hashlib.sha256(r.encode()).hexdigest()[:4]}"
               for r, lab in zip(pairs.loc[clash, "raw"], pairs.loc[clash, "label"])}
        df["dataset"] = [fix.get(r, lab) for r, lab in zip(raw, label)]
    return df.drop(columns=["dataset_label"], errors="ignore")


def _one_name_per_content(labels: set[str]) -> dict[str, str]:
    """Labels ``name@fingerprint`` mapped so that one content has one name: a published file's the named
    source's (the subset read as ``npz:PATH`` before it was ``cifar10-subset``), else the first of its names."""
    shipped = {digest[:8]: name for name, digest in SHIPPED_SHA256.items()}
    by_content: dict[str, list[str]] = {}
    for lab in sorted(labels):
        if m := FINGERPRINTED.match(lab):
            by_content.setdefault(m["digest"], []).append(lab)
    out = {lab: lab for lab in labels}
    for digest, names in by_content.items():
        for lab in names:
            out[lab] = f"{shipped[digest]}@{digest}" if digest in shipped else names[0]
    return out


def varying_settings(df: pd.DataFrame) -> list[str]:
    """Settings (attack.*, defense.*, victim.*) that take more than one value within some
    (dataset, attack, defense): the ones a reader needs to tell two rows apart."""
    keys = [c for c in config_columns(df) if c not in ("dataset", "attack.name", "defense.name")]
    if df.empty or not keys:
        return []
    df = with_added_defaults(df)  # as summarize reads them: a row from before a setting is at its default
    keys = [c for c in config_columns(df) if c not in ("dataset", "attack.name", "defense.name")]
    names = ["dataset", "attack.name", "defense.name"]
    g = pd.concat([df[names].astype(str), config_strings(df, keys)], axis=1).groupby(names)
    counts = g.nunique().max()
    return [k for k in keys if counts.get(k, 1) > 1]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v in ("None", "nan", "<NA>"):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def _config_text(r: pd.Series, varying: list[str]) -> str:
    parts = [str(r["defense.name"])]
    parts += [f"{k}={_fmt(r[k])}" for k in varying if k in r and _fmt(r[k])]
    return " ".join(parts)


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _axes(x0, x1, y0, y1, xlabel: str, ylabel: str) -> list[str]:
    sx, sy = _scale(x0, x1, PAD, W - 10), _scale(y0, y1, H - PAD, 12)
    out = [f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" class="ax"/>',
           f'<line x1="{PAD}" y1="12" x2="{PAD}" y2="{H - PAD}" class="ax"/>']
    for t in np.linspace(x0, x1, 5):
        out.append(f'<text x="{sx(t):.1f}" y="{H - PAD + 14}" class="tick" text-anchor="middle">{t:.3g}</text>')
    for t in np.linspace(y0, y1, 5):
        out.append(f'<text x="{PAD - 4}" y="{sy(t) + 3:.1f}" class="tick" text-anchor="end">{t:.3g}</text>')
    out.append(f'<text x="{(PAD + W) / 2}" y="{H - 8}" class="lab" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{H / 2}" class="lab" text-anchor="middle" '
               f'transform="rotate(-90 12 {H / 2})">{html.escape(ylabel)}</text>')
    return out


def _range(values: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    d = (hi - lo) or max(abs(hi), 1e-3)
    return lo - pad * d, hi + pad * d


def pareto_svgs(p: pd.DataFrame, varying: list[str]) -> list[tuple[str, str]]:
    """(title, inline SVG) per (dataset, attack): test_acc against poison_success, frontier joined."""
    if p.empty or "poison_success_mean" not in p:
        return []
    colors = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(sorted(p["defense.name"].astype(str).unique()))}
    out = []
    for (dataset, attack), g in p.groupby(["dataset", "attack.name"]):
        g = g.dropna(subset=["test_acc_mean", "poison_success_mean"])
        if g.empty:
            continue
        (x0, x1), (y0, y1) = _range(g["test_acc_mean"].to_numpy()), _range(g["poison_success_mean"].to_numpy())
        sx, sy = _scale(x0, x1, PAD, W - 10), _scale(y0, y1, H - PAD, 12)
        svg = _axes(x0, x1, y0, y1, "test_acc (higher is better)", "poison_success (lower is better)")
        front = g[g["on_front"]].sort_values("test_acc_mean")
        if len(front) > 1:
            pts = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(front["test_acc_mean"],
                                                                    front["poison_success_mean"]))
            svg.append(f'<polyline points="{pts}" class="front"/>')
        for _, r in g.iterrows():
            tip = (f"{_config_text(r, varying)}\ntest_acc {_fmt(r['test_acc_mean'])} ± {_fmt(r.get('test_acc_std'))}"
                   f"\npoison_success {_fmt(r['poison_success_mean'])} ± {_fmt(r.get('poison_success_std'))}"
                   f"\nseeds {int(r['seeds'])}" + (" · on the Pareto front" if r["on_front"] else "")
                   + "".join(f"\n{c} {_fmt(r[f'{c}_mean'])} s" for c in ("purify_seconds", "train_seconds")
                             if f"{c}_mean" in r and _fmt(r[f"{c}_mean"])))
            ring = ' stroke="#000" stroke-width="2"' if r["on_front"] else ""
            cx, cy = sx(r["test_acc_mean"]), sy(r["poison_success_mean"])
            svg.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{colors[str(r["defense.name"])]}"{ring} '
                       f'class="pt"><title>{html.escape(tip)}</title></circle>')
            right = cx > W * 0.7  # labels near the right edge run leftwards
            svg.append(f'<text x="{cx - 6 if right else cx + 6:.1f}" y="{cy - 6:.1f}" class="tick" '
                       f'text-anchor="{"end" if right else "start"}">{html.escape(_config_text(r, varying))}</text>')
        legend = "".join(f'<span class="key"><i style="background:{colors[d]}"></i>{html.escape(d)}</span>'
                         for d in sorted(g["defense.name"].astype(str).unique()))
        out.append((f"{dataset} · {attack}", _svg(svg) + f'<div class="legend">{legend}</div>'))
    return out


def sigma_svgs(s: pd.DataFrame, varying: list[str]) -> list[tuple[str, str]]:
    """(title, inline SVG) per (dataset, attack) of a study over σ: test_acc against σ×255, a line per
    purifier config; configs without σ as dashed horizontal lines."""
    if "defense.sigma" not in s or s["defense.sigma"].dropna().nunique() < 3:
        return []
    others = [k for k in varying if k != "defense.sigma"]
    out = []
    s = s[np.isfinite(s["test_acc_mean"].astype(float))]
    for (dataset, attack), g in s.groupby(["dataset", "attack.name"]):
        with_sigma = g[g["defense.sigma"].notna()]
        if with_sigma.empty:
            continue
        xs = with_sigma["defense.sigma"].to_numpy(float) * 255
        (x0, x1), (y0, y1) = _range(xs), _range(g["test_acc_mean"].to_numpy())
        sx, sy = _scale(x0, x1, PAD, W - 10), _scale(y0, y1, H - PAD, 12)
        svg = _axes(x0, x1, y0, y1, "σ × 255 (noise before denoising)", "test_acc")
        legend = []
        lines = list(with_sigma.groupby(["defense.name", *others], dropna=False))
        for i, (key, d) in enumerate(lines):
            color = PALETTE[i % len(PALETTE)]
            d = d.sort_values("defense.sigma")
            name = " ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)) if _fmt(k))
            pts = " ".join(f"{sx(v * 255):.1f},{sy(a):.1f}" for v, a in zip(d["defense.sigma"], d["test_acc_mean"]))
            svg.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
            for _, r in d.iterrows():
                tip = f"{name} σ={_fmt(r['defense.sigma'] * 255)}/255\ntest_acc {_fmt(r['test_acc_mean'])}"
                svg.append(f'<circle cx="{sx(r["defense.sigma"] * 255):.1f}" cy="{sy(r["test_acc_mean"]):.1f}" '
                           f'r="4" fill="{color}" class="pt"><title>{html.escape(tip)}</title></circle>')
            legend.append((color, name))
        for _, r in g[g["defense.sigma"].isna()].iterrows():
            y = sy(r["test_acc_mean"])
            svg.append(f'<line x1="{PAD}" x2="{W - 10}" y1="{y:.1f}" y2="{y:.1f}" class="base">'
                       f'<title>{html.escape(_config_text(r, others))} (no σ): {_fmt(r["test_acc_mean"])}</title></line>')
        keys = "".join(f'<span class="key"><i style="background:{c}"></i>{html.escape(n)}</span>' for c, n in legend)
        out.append((f"{dataset} · {'clean data' if attack == 'none' else attack}",
                    _svg(svg) + f'<div class="legend">{keys}<span class="key"><i class="dash"></i>no σ</span></div>'))
    return out


def _svg(parts: list[str]) -> str:
    return f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">' + "".join(parts) + "</svg>"


def _png_uri(rows: list[np.ndarray], scale: int = 2) -> str:
    from PIL import Image

    strip = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    img = Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_strips(df: pd.DataFrame, cache: str | None, varying: list[str], n: int = 8) -> list[tuple[str, str]]:
    """(title, <img>) per stored (poisoned set, purified set) of the rows: the first ``n`` poisoned training
    samples (the first samples where none is) poisoned / purified / clean."""
    if cache is None or "poison_key" not in df:
        return []
    out = []
    stored = df.dropna(subset=["poison_key"]).copy()
    stored["purification_key"] = stored.get("purification_key", pd.Series(index=stored.index, dtype=object))
    config = stored[["dataset", "attack.name", "defense.name", *varying]].astype(str)
    first = stored[~config.duplicated()].sort_values(["dataset", "attack.name", "defense.name", *varying])
    first = first[~first[["poison_key", "purification_key"]].astype(str).duplicated()]  # same images: once
    for _, r in first.iterrows():
        title = f"{r['dataset']} · {r['attack.name']} · {_config_text(r, varying)}"
        try:
            shown, names = _strip(cache, r, n)
        except Exception as e:  # noqa: BLE001 — a damaged artifact costs its strip, not the report
            out.append((title, f'<p class="rows">no images: {html.escape(type(e).__name__)}: '
                               f'{html.escape(str(e)[:200])}</p>'))
            continue
        if shown:
            out.append((title, f'<img alt="{html.escape(title)}" src="{_png_uri(shown)}">'
                               f'<div class="rows">rows: {" / ".join(names)}</div>'))
    return out


def _strip(cache: str, r: pd.Series, n: int) -> tuple[list[np.ndarray], list[str]]:
    """The rows of one strip: the first ``n`` poisoned samples, purified and clean, aligned by index (read
    shard by shard up to those rows: a full-size study's sets are never held whole)."""
    ploc = storage.join(cache, "poisons", str(r["poison_key"]))
    key = r.get("purification_key")
    qloc = storage.join(cache, "purified", str(key)) if isinstance(key, str) else None
    if not is_dataset(ploc) or (qloc is not None and not is_dataset(qloc)):
        return [], []
    train = read_rows(ploc, "train", lambda t: t.column("poisoned").to_numpy(zero_copy_only=False), n)
    poisoned = len(train) > 0
    if not poisoned:  # clean data: the first samples
        train = read_rows(ploc, "train", lambda t: np.ones(t.num_rows, bool), n)
    ids = [int(i) for i in train.index]
    shown, names = [train.images], ["poisoned" if poisoned else "training"]
    others = ([(qloc, "train", "purified")] if qloc is not None else []) + (
        [(ploc, "originals", "clean")] if poisoned and "originals" in _splits(ploc) else [])
    wanted = np.array(ids, np.int64)
    for loc, name, label in others:
        s = read_rows(loc, name, lambda t: np.isin(t.column("index").to_numpy(), wanted), len(ids))
        pos = {int(i): j for j, i in enumerate(s.index)}
        if all(i in pos for i in ids):
            shown.append(s.images[[pos[i] for i in ids]])
            names.append(label)
    return shown, names


def _splits(loc: str) -> list[str]:
    return list(read_meta(loc).get("splits", {}))


def study_cost(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(what, how much): trials, purifications computed/reused, seconds per device."""
    out = [("trials", str(len(df))), ("seeds", ", ".join(map(str, sorted(df["seed"].unique())))
                                      if "seed" in df else "")]
    if "purify_reused" in df:
        r = df["purify_reused"].dropna().astype(bool)
        out.append(("purifications", f"{int((~r).sum())} computed, {int(r.sum())} reused"))
    if "device" in df:
        for dev, g in df.groupby(df["device"].astype(str)):
            parts = [f"{c.removesuffix('_seconds') or 'trial'} {g[c].sum() / 60:.1f} min"
                     for c in ("craft_seconds", "purify_seconds", "train_seconds", "seconds") if c in g]
            out.append((f"time on {dev}", " · ".join(parts)))
    return out


def summary_table(s: pd.DataFrame, varying: list[str]) -> tuple[list[str], list[list[str]]]:
    cols = ["dataset", "attack.name", "defense.name", *varying, "seeds"]
    for m in METRIC_NAMES:
        if f"{m}_mean" in s and s[f"{m}_mean"].notna().any():
            cols += [f"{m}_mean", f"{m}_std"]
    cols = [c for c in cols if c in s]
    return cols, [[_fmt(v) for v in r] for r in s[cols].itertuples(index=False)]


def render(df: pd.DataFrame, title: str, cache: str | None = None, summary: pd.DataFrame | None = None) -> str:
    """The page for the rows ``df`` of one results store (``summary``: :func:`summarize` of them, if known)."""
    df = labelled(df)
    varying = varying_settings(df)
    s = summarize(df) if summary is None else summary
    p = pareto(df, summary=s)
    cols, rows = summary_table(s, varying)
    sections = [("Pareto fronts", pareto_svgs(p, varying), "plots"), ("Accuracy against σ", sigma_svgs(s, varying),
                                                                   "plots"),
                ("Images: poisoned / purified / clean", image_strips(df, cache, varying), "strips")]
    body = [f"<h1>{html.escape(title)}</h1>", '<table class="cost">' + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in study_cost(df)) + "</table>",
        f"<p>Settings that vary within a (dataset, attack, defense): {html.escape(', '.join(varying) or 'none')}.</p>"]
    for name, items, kind in sections[:2]:
        if items:
            body.append(f"<h2>{name}</h2><div class='{kind}'>" + "".join(
                f"<figure><figcaption>{html.escape(t)}</figcaption>{svg}</figure>" for t, svg in items) + "</div>")
    body.append('<h2>Summary over seeds</h2><input id="filter" placeholder="filter rows (e.g. lsp eclipse)" '
                'size="40"> <span id="count"></span>')
    head = "".join(f'<th data-col="{html.escape(c)}">{html.escape(c)}</th>' for c in cols)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows)
    body.append(f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>')
    name, items, kind = sections[2]
    body.append(f"<h2>{name}</h2>" + (f"<div class='{kind}'>" + "".join(
        f"<figure><figcaption>{html.escape(t)}</figcaption>{img}</figure>" for t, img in items) + "</div>"
        if items else "<p>No stored datasets found for these rows (image strips need the study's cache: "
                      "rows written by a study, and its <code>.cache</code> or <code>$ECLIPSE_RAY_CACHE</code>).</p>"))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}<script>{JS}</script></body></html>")


def write_html(study: str, df: pd.DataFrame, out: str, cache: str | None = None,
               summary: pd.DataFrame | None = None) -> str:
    """Write ``report.html`` for the rows ``df`` of ``study`` into ``out``; returns its location."""
    title = f"Results: {study.rstrip('/').rsplit('/', 1)[-1]}"
    path = storage.join(out, "report.html")
    page = render(df, title, cache if cache is not None else study_cache(study), summary)
    storage.write_bytes(path, page.encode())
    return path


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}h2{font-size:1.15em;
margin-top:1.6em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3;cursor:pointer;white-space:nowrap}th.asc:after{content:" \\25B2"}th.desc:after{content:" \\25BC"}
table.cost th{cursor:default;text-align:left}.plots,.strips{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #ddd;padding:6px}figcaption{font-weight:600;margin-bottom:4px}
.ax{stroke:#444}.tick{font-size:10px;fill:#444}.lab{font-size:11px;fill:#222}.front{fill:none;stroke:#000;
stroke-dasharray:5 3;stroke-width:1.3}.pt:hover{stroke:#000;stroke-width:3}.base{stroke:#777;stroke-dasharray:4 3}
.legend{font-size:11px}.key{margin-right:10px}.key i{display:inline-block;width:10px;height:10px;margin-right:3px;
border-radius:5px}.key i.dash{border-top:2px dashed #777;height:0;border-radius:0}.rows{font-size:11px;color:#555}
img{image-rendering:pixelated}
"""

JS = """
(function(){
  window.addEventListener('error', function(e){ document.body.dataset.error = String(e.message); });
  var table = document.getElementById('summary'), body = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells), input = document.getElementById('filter');
  var state = {filter: '', sort: null, desc: false};
  function num(s){ if (s === '') return null; var v = Number(s); return isNaN(v) ? null : v; }
  function apply(){
    var rows = Array.prototype.slice.call(body.rows), words = state.filter.toLowerCase().split(/\\s+/).filter(Boolean);
    var shown = 0;
    rows.forEach(function(r){
      var t = Array.prototype.map.call(r.cells, function(c){ return c.textContent; }).join('\t').toLowerCase();
      var ok = words.every(function(w){ return t.indexOf(w) >= 0; }); r.style.display = ok ? '' : 'none';
      if (ok) shown++; });
    var i = heads.findIndex(function(h){ return h.dataset.col === state.sort; });
    heads.forEach(function(h){ h.className = ''; });
    if (i >= 0) {
      heads[i].className = state.desc ? 'desc' : 'asc';
      rows.sort(function(a, b){
        var x = a.cells[i].textContent, y = b.cells[i].textContent, nx = num(x), ny = num(y), c;
        if (nx !== null && ny !== null) c = nx - ny;
        else if (nx === null && ny === null) c = x.localeCompare(y);
        else return nx === null ? 1 : -1;  // blanks and text after numbers, either way
        return state.desc ? -c : c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    }
    document.getElementById('count').textContent = shown + ' of ' + rows.length + ' rows';
    var h = 'filter=' + encodeURIComponent(state.filter) + (state.sort ? '&sort=' + encodeURIComponent(state.sort)
            + '&desc=' + (state.desc ? 1 : 0) : '');
    if (location.hash.slice(1) !== h) history.replaceState(null, '', '#' + h);
  }
  location.hash.slice(1).split('&').forEach(function(kv){
    var i = kv.indexOf('='), k = i < 0 ? kv : kv.slice(0, i), v = i < 0 ? '' : kv.slice(i + 1);
    try { v = decodeURIComponent(v); } catch (e) { /* a hand-edited hash: keep it as typed */ }
    if (k === 'filter') state.filter = v; if (k === 'sort') state.sort = v; if (k === 'desc') state.desc = v === '1'; });
  input.value = state.filter;
  input.addEventListener('input', function(){ state.filter = input.value; apply(); });
  heads.forEach(function(h){ h.addEventListener('click', function(){
    state.desc = state.sort === h.dataset.col ? !state.desc : false; state.sort = h.dataset.col; apply(); }); });
  apply();
  document.body.dataset.ready = '1';
})();
"""
