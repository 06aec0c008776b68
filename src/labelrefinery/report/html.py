"""The HTML page of ``refinery inspect``: one self-contained file, plots and images embedded as PNG data URIs.

:func:`render` turns what :mod:`labelrefinery.report.inspection` gathered about each
run (a *view*: a plain dict, described in :func:`render`) into the page. Plots
are drawn with matplotlib's Agg backend and images encoded by Pillow (a
dependency of matplotlib); the page needs no server, no network and no
script, and its layout wraps to a laptop's width.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # noqa: E402 - before pyplot: no display here, and none needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from PIL import Image  # noqa: E402 - Pillow, which matplotlib depends on

GROUP_TITLES = {
    "disputed": "Most disputed: lowest refined probability of the given label (best generation by validation)",
    "changed": "Most changed between generations",
    "random": "Random images",
    "flipped_corrected": "Flipped by the injected noise, and corrected (refined argmax = clean label; best "
                         "generation by validation)",
    "flipped_missed": "Flipped by the injected noise, and missed (refined argmax is not the clean label; best "
                      "generation by validation)",
    "clean_harmed": "Not flipped, yet disputed (refined argmax differs from the given, correct label; best "
                    "generation by validation)",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:16px 20px 48px}
h1{font-size:1.6em;margin:.4em 0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
h3{margin-top:1.4em}nav a{margin-right:14px}p.note{color:#555;font-size:.92em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em;background:#fff}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}.scroll{overflow-x:auto;max-width:100%}
img.plot{max-width:100%;height:auto;background:#fff;border:1px solid #e3e3e3}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:262px;font-size:.82em}
.card img{width:84px;height:84px;image-rendering:pixelated;float:left;margin:0 8px 6px 0;border:1px solid #ccc}
.card .head{min-height:88px}.card table{width:100%;margin:4px 0 0;clear:both;font-size:.95em}
.card td{text-align:left;padding:1px 4px;white-space:nowrap}.given{font-weight:700}
.bar{display:inline-block;height:8px;background:#4a7fd4;vertical-align:middle;margin-right:3px}
.bar.g{background:#2e9e4f}.flip{color:#b3261e}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:.9em}
dl.facts dt{font-weight:600}dl.facts dd{margin:0;word-break:break-word}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
"""


def png_data_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of ``image``: ``(C, H, W) uint8`` with C = 1 or 3."""
    pixels = np.ascontiguousarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{html.escape(alt)}">'


def _e(x: Any) -> str:
    return html.escape(str(x))


def markdown_to_html(text: str) -> str:
    """The results Markdown of :func:`labelrefinery.report.tables.format_table` as HTML: pipe tables and paragraphs."""
    out, rows = [], []

    def flush():
        if rows:
            head, *body = rows
            out.append('<div class="scroll"><table><tr>' + "".join(f"<th>{_e(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table></div>")
            rows.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} and c for c in cells):
                rows.append(cells)
            continue
        flush()
        if s:
            out.append(f"<p>{_e(s)}</p>")
    flush()
    return "\n".join(out)


# ------------------------------------------------------------------ plots
def accuracy_plot(results: dict) -> str:
    """Test and validation top-1 per generation: mean with std error bars, each seed a point; controls and
    ensembles as horizontal lines. Returns a PNG data URI."""
    gens = results["generations"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    x = np.array([g["generation"] for g in gens])
    test = [g["test_top1_mean"] for g in gens]
    err = [g["test_top1_std"] or 0 for g in gens]
    ax.errorbar(x, test, yerr=err, marker="o", capsize=4, color="#1f5fbf", label="test (mean ± std)")
    ax.plot(x, [g["val_top1_mean"] for g in gens], marker="s", ls="--", color="#e08a00", label="validation (mean)")
    for seed, rows in results["per_seed"].items():
        xs = np.array([r["generation"] for r in rows], dtype=float)
        ax.scatter(xs + 0.06 * (int(seed) % 5 - 2), [r["test_top1"] for r in rows], s=14, color="#1f5fbf",
                   alpha=0.45, zorder=3)
    styles = iter([":", "-.", (0, (5, 2)), (0, (1, 1))])
    for name, c in results.get("controls", {}).items():
        ax.axhline(c["test_top1_mean"], ls=next(styles, ":"), color="#777", label=f"{name} control (test)")
    for e in results.get("ensemble", []):
        ax.axhline(e["test_top1_mean"], ls="-", lw=1, color="#2e9e4f",
                   label="ensemble " + "+".join(f"R{g}" for g in e["generations"]) + " (test)")
    ax.set_xticks(x, [f"R{g}" for g in x])
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _figure_uri(fig)


def epoch_curves_plot(epochs: list[dict]) -> str | None:
    """Validation top-1 after every epoch, generations one after another along the x axis, a line per seed."""
    if not epochs:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    gens = sorted({r["generation"] for r in epochs if isinstance(r["generation"], int)})
    longest = {g: max(r["epoch"] for r in epochs if r["generation"] == g) for g in gens}
    offset, start = 0, {}
    for g in gens:
        start[g] = offset
        offset += longest[g]
        ax.axvline(offset + 0.5, color="#ccc", lw=0.8)
        ax.text(start[g] + 1, 0.02, f"R{g}", transform=ax.get_xaxis_transform(), fontsize=8, color="#555")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, seed in enumerate(sorted({r["seed"] for r in epochs})):
        for g in gens:
            rows = sorted((r for r in epochs if r["seed"] == seed and r["generation"] == g), key=lambda r: r["epoch"])
            if rows:
                ax.plot([start[g] + r["epoch"] for r in rows], [r["val_top1"] for r in rows], marker=".",
                        color=colors[i % len(colors)], label=f"seed {seed}" if g == gens[0] else None)
    ax.set_xlabel("epoch (generations in order)")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _figure_uri(fig)


def label_stats_plot(stats: list[dict]) -> str:
    """Per generation: mean entropy (nats) on the left, shares (%) on the right."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(7.6, 2.8))
    x = [s["generation"] for s in stats]
    a.bar(x, [s["mean_entropy"] for s in stats], color="#7a5cc8")
    a.set_title("mean entropy of refined labels (nats)", fontsize=9)
    for key, label in (("agreement", "agree with given label"), ("changed", "suggested label changed"),
                       ("corrected", "flipped corrected"), ("harmed", "clean harmed"), ("detection_f1", "detection F1")):
        values = [s.get(key) for s in stats]
        if any(v is not None for v in values):
            b.plot(x, [np.nan if v is None else 100 * v for v in values], marker="o", label=label)
    b.set_title("share of training images (%)", fontsize=9)
    b.legend(fontsize=7)
    for ax in (a, b):
        ax.set_xticks(x, [f"R{g}" for g in x])
        ax.grid(alpha=0.3)
    return _figure_uri(fig)


def matrix_plot(matrix: list[list[float | None]], classes: list[str], title: str, xlabel: str, ylabel: str, fmt: str) -> str:
    """A K x K heatmap (square-root colour scale, so small off-diagonal entries show) with values written in."""
    m = np.array([[np.nan if x is None else x for x in row] for row in matrix], dtype=float)
    k = len(classes)
    side = min(7.5, 1.6 + 0.5 * k)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    finite = m[np.isfinite(m)]
    ax.imshow(m, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=max(float(finite.max()) if finite.size else 1, 1e-9)))
    short = [c if len(c) <= 12 else c[:11] + "…" for c in classes]
    ax.set_xticks(range(k), short, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), short, fontsize=7)
    if k <= 20:
        top = finite.max() if finite.size else 1
        for i in range(k):
            for j in range(k):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=6,
                            color="white" if m[i, j] > 0.45 * top else "#222")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    return _figure_uri(fig)


# ------------------------------------------------------------------ image cards
def _top3_cell(top3: list[list], highlight: str) -> str:
    parts = []
    for name, p in top3:
        bar = f'<span class="bar{" g" if name == highlight else ""}" style="width:{max(1, round(36 * p))}px"></span>'
        label = f'<span class="given">{_e(name)}</span>' if name == highlight else _e(name)
        parts.append(f"{bar}{label} {p:.2f}")
    return "<br>".join(parts)


def image_card(item: dict, generations: list[int]) -> str:
    """One image with its given label (and clean label) and its top-3 refined labels at every generation.

    ``item``: ``{"index", "given", "clean" (optional), "image" (C, H, W) uint8 or None, "top3": per generation
    a list of three [class name, probability] pairs, "caption" (optional), "source" (optional: the image's
    file, shown instead of the index)}``.
    """
    img = _img(png_data_uri(item["image"]), f"training image {item['index']}", "") if item.get("image") is not None \
        else ""
    clean = item.get("clean")
    name = _e(Path(item["source"]).name) if item.get("source") else f"#{item['index']}"
    where = f' title="{_e(item["source"])}"' if item.get("source") else ""
    head = [f"<span{where}>{name}</span>", f'given: <span class="given">{_e(item["given"])}</span>']
    if clean is not None and clean != item["given"]:
        head.append(f'<span class="flip">clean: {_e(clean)} (flipped)</span>')
    if item.get("caption"):
        head.append(_e(item["caption"]))
    rows = "".join(f"<tr><td>R{g}</td><td>{_top3_cell(t, item['given'])}</td></tr>"
                   for g, t in zip(generations, item["top3"]))
    return f'<div class="card"><div class="head">{img}{"<br>".join(head)}</div><table>{rows}</table></div>'


# ------------------------------------------------------------------ the page
def _facts(facts: dict) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts.items()) + "</dl>"


def _table(header: list[str], rows: list[list]) -> str:
    return ('<div class="scroll"><table><tr>' + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table></div>")


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _run_sections(v: dict, n: int) -> str:
    """One run's sections: results, what the labels became, Figure 4, label issues, run facts."""
    out = [f'<h2 id="run{n}">Run {n + 1}: {_e(v["title"])}</h2>']
    out += [f'<p class="note">{_e(note)}</p>' for note in v.get("notes", [])]
    out.append("<h3>Results</h3>")
    out.append(_img(accuracy_plot(v["results"]), "test and validation top-1 per generation"))
    curves = epoch_curves_plot(v["epochs"])
    if curves:
        out.append(_img(curves, "validation top-1 per epoch"))
    gens = [s["generation"] for s in v["label_stats"]]
    out += _label_sections(v)
    out += _figure4_sections(v, gens)
    out += _issue_sections(v, gens)
    out.append("<h3>Run facts</h3>")
    out.append(_facts(v["facts"]))
    if v.get("timing"):
        out.append(_table(["seed", "generation", "wall time (s)", "epochs", "images/s (training, median)"],
                          v["timing"]))
    out.append("<details><summary>Configuration</summary>" + _facts(v["config"]) + "</details>")
    return "\n".join(out)


def _label_sections(v: dict) -> list[str]:
    """What the labels became: the statistics table and plot, class overlap and confusion matrices."""
    out = [f"<h3>What the labels became (seed {v['seed']})</h3>"]
    if not v["label_stats"]:
        return out
    classes = v["classes"]
    keys = [("mean_entropy", "mean entropy (nats)"), ("agreement", "agree with given (%)"),
            ("changed", "suggested label changed (%)"), ("corrected", "flipped corrected (%)"),
            ("harmed", "clean harmed (%)"), ("detection_precision", "detection precision (%)"),
            ("detection_recall", "detection recall (%)"), ("detection_f1", "detection F1 (%)")]
    keys = [(k, t) for k, t in keys if any(s.get(k) is not None for s in v["label_stats"])]
    rows = [[f"R{s['generation']}"] + [f"{s[k]:.3f}" if k == "mean_entropy" else _pct(s.get(k)) for k, _ in keys]
            for s in v["label_stats"]]
    out.append('<p class="note">Refined labels each generation made for the training images (its softmax on '
               "each image itself). The suggested label is the refined argmax, or the given label where it ties "
               "with the top class; changed: from the previous generation's (R1: from the given label).</p>")
    out.append(_table(["generation"] + [t for _, t in keys], rows))
    out.append(_img(label_stats_plot(v["label_stats"]), "refined-label statistics per generation"))
    for g, m in v["overlap"].items():
        out.append(_img(matrix_plot(m, classes, f"class overlap, R{g}: mean refined probability",
                                    "refined label's class j", "given label i", ".2f"), f"class overlap R{g}"))
    for g, m in v["confusion"].items():
        out.append(_img(matrix_plot(m, classes, f"given label vs suggested label, R{g} (images)",
                                    "suggested label", "given label", ".0f"), f"confusion R{g}"))
    return out


def _figure4_sections(v: dict, gens: list[int]) -> list[str]:
    """The paper's Figure 4 for real images: image cards per group, and one image's crops."""
    out = [f"<h3>Figure 4, for real images (seed {v['seed']})</h3>",
           '<p class="note">Each image with its given label and its top-3 refined labels with probabilities at '
           "every generation (the Label Refinery paper's Figure 4); the given label is in bold and green.</p>"]
    for name in ("disputed", "changed", "random"):
        items = v["groups"].get(name) or []
        if items:
            out.append(f"<h4>{_e(GROUP_TITLES[name])}</h4><div class=\"cards\">"
                       + "".join(image_card(it, gens) for it in items) + "</div>")
    crops = v.get("crops")
    if crops and crops.get("others"):
        out.append("<h4>Crops the first refinery names differently from their image's label</h4>")
        out.append(f'<p class="note">Of one random crop of each of {crops["surveyed"]} training images (drawn as '
                   f"training draws them), R{crops['generations'][0]} names another class than the image's label for "
                   f"{_pct(crops['crop_other_share'])}%, against {_pct(crops['whole_other_share'])}% of the whole "
                   "images. A crop that shows only part of the scene, or another object, carries another label: "
                   "what per-crop refined labels (<code>--labels online</code>) give the student. The most "
                   "confident such crops:</p>")
        out.append('<div class="cards">' + "".join(image_card(c, crops["generations"]) for c in crops["others"])
                   + "</div>")
    if crops and crops.get("items"):
        out.append(f"<h4>One image, several crops: the refinery's labels per crop (image #{crops['index']}, given "
                   f"{_e(crops['given'])})</h4>")
        out.append('<p class="note">Per-crop (online) labels: each crop the student sees is labelled by the '
                   "refinery on that crop. This image's crops disagree the most among the candidates tried.</p>")
        out.append('<div class="cards">' + "".join(image_card(c, crops["generations"]) for c in crops["items"])
                   + "</div>")
    return out


def _issue_sections(v: dict, gens: list[int]) -> list[str]:
    """Label issues: the most disputed rows of ``label-issues``, and with injected noise its three groups."""
    issues = v.get("issues")
    out = [f"<h3>Label issues (seed {v['seed']})</h3>"]
    if issues:
        out.append(f'<p class="note">R{issues["generation"]} (the best generation by validation) disputes '
                   f'{issues["disputed"]} of {issues["total"]} given labels; the {len(issues["rows"])} most '
                   "disputed, as in <code>refinery label-issues</code>'s CSV:</p>")
        if issues["rows"]:
            header = list(issues["rows"][0])
            out.append(_table(header, [[r[h] for h in header] for r in issues["rows"]]))
    for name in ("flipped_corrected", "flipped_missed", "clean_harmed"):
        items = v["groups"].get(name)
        if items is not None:
            body = "".join(image_card(it, gens) for it in items) or '<p class="note">none</p>'
            out.append(f"<h4>{_e(GROUP_TITLES[name])}</h4><div class=\"cards\">{body}</div>")
    return out


def render(views: list[dict], results_markdown: str, title: str = "Label Refinery report") -> str:
    """The whole page.

    Args:
        views: one dict per run directory with keys ``title`` (str), ``notes`` (list of str), ``results``
            (:func:`labelrefinery.report.tables.summarize_run`), ``epochs`` (epoch records of ``metrics.jsonl``),
            ``seed`` (int), ``classes`` (K names), ``label_stats`` (per generation: ``generation``,
            ``mean_entropy``, ``agreement``, ``changed`` and the label-quality shares), ``overlap`` and
            ``confusion`` ({generation: K x K}), ``groups`` ({group name: [card item, see :func:`image_card`]}),
            ``crops`` (None or ``{"index", "given", "generations", "items": [card item]}``), ``issues``
            (None or ``{"generation", "disputed", "total", "rows": [dict]}``), ``facts`` and ``config``
            (dicts shown as lists), ``timing`` (table rows).
        results_markdown: the results tables of all runs (:func:`labelrefinery.report.tables.format_table`).

    Returns:
        The HTML document as a string.
    """
    nav = " ".join(f'<a href="#run{i}">run {i + 1}</a>' for i in range(len(views)))
    body = [f"<h1>{_e(title)}</h1>", f"<nav>{nav}</nav>", "<h2>Results table</h2>", markdown_to_html(results_markdown)]
    body += [_run_sections(v, i) for i, v in enumerate(views)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")
