"""Drawing an attribution graph so it can be read: one row per layer that has nodes, nodes spread along their
row in prompt-position order with a fixed slot each (so no label overlaps another), and only the strongest
edges. The same layout serves the PNG and the HTML page, whose nodes show their contexts and label on hover.

    layout(graph["nodes"])            -> Layout: {node id: (x, y)} in slot units, row labels
    render_png(graph, path)           -> the picture (matplotlib, Agg)
    render_html(graph, candidates)    -> one self-contained page: an SVG with hover cards, then sortable tables
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

LOGIT = "logit_diff"
EDGES_SHOWN = 30  # node-to-node edges drawn, strongest first
LOGIT_EDGES_SHOWN = 8  # edges into the metric, from the nodes of largest |influence|
POSITIVE, NEGATIVE = "#2b6cb0", "#c53030"


@dataclass(frozen=True)
class Layout:
    xy: dict[str, tuple[float, float]]  # node id -> (x, y): x in slots, y in rows (0 = lowest layer row)
    width: int  # slots in the widest row
    rows: list[int]  # the layer of each row, bottom to top


def layout(nodes: list[dict]) -> Layout:
    """Rows = the layers that have nodes (sorted), so distant layers do not leave empty bands; within a row,
    nodes by position then |influence|, one slot each, the row centred on the widest row."""
    rows = sorted({n["layer"] for n in nodes})
    by_row = {layer: sorted((n for n in nodes if n["layer"] == layer),
                            key=lambda n: (n["position"], -abs(n["influence"]))) for layer in rows}
    width = max((len(v) for v in by_row.values()), default=1)
    xy: dict[str, tuple[float, float]] = {}
    for y, layer in enumerate(rows):
        row = by_row[layer]
        offset = (width - len(row)) / 2
        xy.update({n["id"]: (offset + i, float(y)) for i, n in enumerate(row)})
    xy[LOGIT] = ((width - 1) / 2, float(len(rows)))
    return Layout(xy, width, rows)


def strongest_edges(graph: dict) -> list[dict]:
    """The edges worth drawing: the EDGES_SHOWN strongest between nodes, and the metric's edges from the
    LOGIT_EDGES_SHOWN nodes of largest |influence| (drawing all of them makes a solid fan)."""
    inner = sorted((e for e in graph["edges"] if e["target"] != LOGIT), key=lambda e: -abs(e["weight"]))
    top_nodes = {n["id"] for n in sorted(graph["nodes"], key=lambda n: -abs(n["influence"]))[:LOGIT_EDGES_SHOWN]}
    return inner[:EDGES_SHOWN] + [e for e in graph["edges"] if e["target"] == LOGIT and e["source"] in top_nodes]


def node_label(node: dict) -> str:
    return f"{node['name']}\n@{node['position']} {node['token'].strip()[:10]!r}\n{node['influence']:+.2f}"


def render_png(graph: dict, path: Path | str) -> None:
    """Node area ~ |influence|; blue pushes toward the first contrastive token, red the second; a black ring
    marks a node at the prompt's own tokens."""
    from reasonlab.plots import pyplot

    plt = pyplot()
    nodes, lay = graph["nodes"], layout(graph["nodes"])
    fig, ax = plt.subplots(figsize=(max(8.0, 1.25 * lay.width + 1.5), max(5.0, 1.15 * (len(lay.rows) + 1) + 1.5)))
    edges = strongest_edges(graph)
    wmax = max((abs(e["weight"]) for e in edges), default=1.0) or 1.0
    for e in edges:
        (x0, y0), (x1, y1) = lay.xy[e["source"]], lay.xy[e["target"]]
        ax.plot([x0, x1], [y0, y1], color=POSITIVE if e["weight"] > 0 else NEGATIVE,
                alpha=0.15 + 0.55 * abs(e["weight"]) / wmax, lw=0.4 + 2.2 * abs(e["weight"]) / wmax, zorder=1)
    biggest = max((abs(n["influence"]) for n in nodes), default=1.0) or 1.0
    for n in nodes:
        x, y = lay.xy[n["id"]]
        ax.scatter([x], [y], s=40 + 500 * abs(n["influence"]) / biggest, zorder=2,
                   color=POSITIVE if n["influence"] > 0 else NEGATIVE,
                   edgecolors="black" if n["origin"] == "prompt" else "none", linewidths=1.5)
        ax.annotate(node_label(n), (x, y), fontsize=6.5, ha="center", va="top", xytext=(0, -9),
                    textcoords="offset points", zorder=3,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 0.6})
    lx, ly = lay.xy[LOGIT]
    ax.scatter([lx], [ly], marker="s", s=260, color="black", zorder=2)
    a, b = graph["contrastive"]
    ax.annotate(f"logit({a!r}) - logit({b!r}) = {graph['logit_diff']:+.2f}", (lx, ly), fontsize=9, ha="center",
                va="bottom", xytext=(0, 10), textcoords="offset points")
    ax.set_yticks(range(len(lay.rows)), [f"layer {layer}" for layer in lay.rows], fontsize=8)
    ax.set_xticks([])
    ax.set_xlim(-0.8, lay.width - 0.2)
    ax.set_ylim(-0.9, len(lay.rows) + 0.8)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    rho = graph["ablation"]["spearman"]
    ax.set_title(f"{graph['prompt']!r}  ({graph['format']}, {graph['method']}, tau={graph['prune']['tau']}, "
                 f"{graph['prune']['mode']}; {len(nodes)} nodes, strongest {len(edges)} edges)\n"
                 f"blue: toward {a!r}, red: toward {b!r}; black ring: a node at the prompt's tokens; "
                 f"ablation rank agreement rho={'n/a' if rho is None else f'{rho:.2f}'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _hover_text(node: dict, candidate: dict | None) -> str:
    lines = [f"{node['id']}  (token {node['token']!r}, {node['origin']})", f"influence {node['influence']:+.4f}, "
             f"activation {node['activation']:+.3f}", "writes: " + ", ".join(map(repr, node["promotes"][:5]))]
    if candidate is not None:
        lines.append(f"label: {candidate.get('label') or '(none: run with --label-concepts)'}")
        contexts = candidate.get("contexts") or []
        lines += [f"context: {c['text'][:160]}" for c in contexts[:3]] or ["context: (no corpus context activates it)"]
    return "\n".join(lines)


def _svg(graph: dict, candidates: dict[str, dict]) -> str:
    lay = layout(graph["nodes"])
    sx, sy, pad = 120.0, 90.0, 60.0
    w, h = lay.width * sx + 2 * pad, (len(lay.rows) + 1) * sy + 2 * pad

    def at(node_id: str) -> tuple[float, float]:
        x, y = lay.xy[node_id]
        return pad + x * sx + sx / 2, h - pad - y * sy

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w:.0f}' height='{h:.0f}' font-size='10'>"]
    edges = strongest_edges(graph)
    wmax = max((abs(e["weight"]) for e in edges), default=1.0) or 1.0
    for e in edges:
        (x0, y0), (x1, y1) = at(e["source"]), at(e["target"])
        parts.append(f"<line x1='{x0:.1f}' y1='{y0:.1f}' x2='{x1:.1f}' y2='{y1:.1f}' "
                     f"stroke='{POSITIVE if e['weight'] > 0 else NEGATIVE}' "
                     f"stroke-opacity='{0.15 + 0.55 * abs(e['weight']) / wmax:.2f}' "
                     f"stroke-width='{0.5 + 2.5 * abs(e['weight']) / wmax:.1f}'/>")
    biggest = max((abs(n["influence"]) for n in graph["nodes"]), default=1.0) or 1.0
    for n in graph["nodes"]:
        x, y = at(n["id"])
        r = 4 + 14 * (abs(n["influence"]) / biggest) ** 0.5
        ring = " stroke='black' stroke-width='2'" if n["origin"] == "prompt" else ""
        parts.append(f"<g class='node'><title>{html.escape(_hover_text(n, candidates.get(n['id'])))}</title>"
                     f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{r:.1f}' "
                     f"fill='{POSITIVE if n['influence'] > 0 else NEGATIVE}'{ring}/>"
                     f"<text x='{x:.1f}' y='{y + r + 11:.1f}' text-anchor='middle'>{html.escape(n['name'])}</text>"
                     f"<text x='{x:.1f}' y='{y + r + 22:.1f}' text-anchor='middle' fill='#555'>"
                     f"@{n['position']} {html.escape(repr(n['token'].strip()[:10]))}</text></g>")
    lx, ly = at(LOGIT)
    parts.append(f"<rect x='{lx - 8:.1f}' y='{ly - 8:.1f}' width='16' height='16' fill='black'/>"
                 f"<text x='{lx:.1f}' y='{ly - 14:.1f}' text-anchor='middle' font-size='12'>"
                 f"{html.escape(graph['metric'])} = {graph['logit_diff']:+.2f}</text>")
    parts += [f"<text x='4' y='{h - pad - i * sy + 4:.1f}' fill='#555'>layer {layer}</text>"
              for i, layer in enumerate(lay.rows)]
    return "".join(parts) + "</svg>"


def render_html(graph: dict, candidates: list[dict] | None = None) -> str:
    """One self-contained page: the graph as SVG (hover a node: its token, influence, what it writes, and for
    concept candidates their label and top corpus contexts), then sortable node and edge tables."""
    by_id = {c["id"]: c for c in candidates or []}

    def table(rows: list[dict], cols: list[str], tid: str) -> str:
        head = "".join(f"<th onclick=\"sortBy('{tid}',{i})\">{html.escape(c)}</th>" for i, c in enumerate(cols))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c)))}</td>" for c in cols) + "</tr>"
                       for r in rows)
        return f"<table id='{tid}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    nodes = [{**n, "label": (by_id.get(n["id"]) or {}).get("label")}
             for n in sorted(graph["nodes"], key=lambda n: -abs(n["influence"]))]
    edges = sorted(graph["edges"], key=lambda e: -abs(e["weight"]))[:300]
    script = ("function sortBy(t,c){const b=document.querySelector('#'+t+' tbody');const r=[...b.rows];"
              "const k=x=>{const v=x.cells[c].textContent;const n=parseFloat(v);return isNaN(n)?v:Math.abs(n)};"
              "r.sort((x,y)=>{const p=k(x),q=k(y);return p<q?1:p>q?-1:0});r.forEach(x=>b.appendChild(x));}")
    patching = graph.get("patching")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>attribution: {html.escape(graph['prompt'])}"
            f"</title><style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;font-size:13px}}"
            f"th{{cursor:pointer;background:#eee}}.node:hover circle{{stroke:#f6ad55;stroke-width:3}}</style>"
            f"<script>{script}</script></head><body>"
            f"<h2>{html.escape(graph['metric'])} = {graph['logit_diff']:+.3f}</h2>"
            f"<p><code>{html.escape(graph['text'])}</code></p><p>Hover a node for its contexts and label.</p>"
            + _svg(graph, by_id)
            + "<h3>Nodes</h3>" + table(nodes, ["id", "token", "activation", "influence", "origin", "label",
                                                "promotes"], "nodes")
            + "<h3>Edges</h3>" + table(edges, ["source", "target", "weight"], "edges")
            + f"<h3>Ablation check</h3><p>Spearman rho = {graph['ablation']['spearman']}</p>"
            + (f"<h3>Patching check</h3><p>counterfactual <code>{html.escape(patching['counterfactual'])}</code>: "
               f"Spearman rho (real vs attribution patching) = {patching['spearman']}, (real vs influence) = "
               f"{patching['spearman_vs_influence']}</p>" if patching else "")
            + "</body></html>")
