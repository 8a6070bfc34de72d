"""The attribution graph's picture and page: a layout where no two nodes share a slot, the strongest edges only,
hover cards with the candidates' contexts and labels."""

from reasonlab.concept_sft.graph_render import (EDGES_SHOWN, LOGIT, LOGIT_EDGES_SHOWN, layout, render_html,
                                                render_png, strongest_edges)


def crowded_graph(n_nodes: int = 24) -> dict:
    """The crowded case: n nodes in layers 25-30, almost all at the last position, every pair linked."""
    nodes = [{"id": f"L{25 + i % 6}/N{i}@{9 if i % 5 else 3}", "name": f"L{25 + i % 6}/N{i}", "layer": 25 + i % 6,
              "position": 9 if i % 5 else 3, "token": " is" if i % 5 else " hormone", "neuron": i,
              "activation": 0.5, "influence": (-1) ** i * (i + 1) / n_nodes, "origin": "prompt" if i == 3 else "tau",
              "promotes": [" renin"], "suppresses": []} for i in range(n_nodes)]
    edges = [{"source": a["id"], "target": b["id"], "weight": 0.01 * (i + j)} for i, a in enumerate(nodes)
             for j, b in enumerate(nodes) if a["layer"] < b["layer"]]
    edges += [{"source": n["id"], "target": LOGIT, "weight": n["influence"]} for n in nodes]
    return {"nodes": nodes, "edges": edges, "prompt": "The hormone is", "format": "completion", "method": "act_x_grad",
            "prune": {"tau": 0.05, "mode": "max"}, "contrastive": [" Ald", " Ren"], "logit_diff": -1.2,
            "metric": "logit(' Ald') - logit(' Ren')", "text": "The hormone is", "ablation": {"spearman": 0.5}}


def test_every_node_has_its_own_slot_one_row_per_layer_present():
    graph = crowded_graph()
    lay = layout(graph["nodes"])
    points = [lay.xy[n["id"]] for n in graph["nodes"]]
    assert len(set(points)) == len(points)
    assert lay.rows == [25, 26, 27, 28, 29, 30]
    for y in {p[1] for p in points}:  # neighbours in a row are a whole slot apart: labels cannot overlap
        xs = sorted(x for x, yy in points if yy == y)
        assert all(b - a >= 1.0 for a, b in zip(xs, xs[1:]))
    assert lay.xy[LOGIT][1] == len(lay.rows)


def test_only_the_strongest_edges_are_drawn():
    graph = crowded_graph()
    shown = strongest_edges(graph)
    inner = [e for e in shown if e["target"] != LOGIT]
    assert len(inner) == EDGES_SHOWN and len(shown) - len(inner) == LOGIT_EDGES_SHOWN
    weakest_shown = min(abs(e["weight"]) for e in inner)
    assert all(abs(e["weight"]) <= weakest_shown for e in graph["edges"] if e["target"] != LOGIT and e not in inner)


def test_png_and_page_with_hover_cards(tmp_path):
    graph = crowded_graph()
    render_png(graph, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    node = graph["nodes"][3]
    page = render_html(graph, [{"id": node["id"], "label": "steroid hormones",
                                "contexts": [{"text": "Aldosterone acts on the distal tubule"}]}])
    assert "<svg" in page and "label: steroid hormones" in page and "Aldosterone acts on the distal tubule" in page
    assert page.count("<title>") == len(graph["nodes"]) + 0 + 1  # one card per node, plus the page title
