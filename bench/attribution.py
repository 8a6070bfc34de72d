"""Attribution cost and credibility on one prompt, side by side in one run.

    python bench/attribution.py [--model smollm2-135m-instruct] [--repeats 3] [--max-nodes 30] [--ablate-top 20]

Cost: act x grad, integrated gradients, and the whole graph (act x grad + edges + ablation check) as
multiples of one plain forward+backward of the logit difference on the same prompt, each the best of `repeats`.
Like with like: the baseline's backward asks for the gradient of the input embeddings only, as act x grad asks
for activations only; neither computes parameter gradients (checked: the bench fails if any .grad appears).
Credibility: Spearman's rho between the predicted effect of zero-ablating each of the top nodes (-influence)
and the real change of the logit difference, for act x grad and for integrated gradients.
"""

import argparse

import torch

from reasonlab.concept_sft import attribution as A
from reasonlab.concept_sft.attribution_graph import attribution_graph
from reasonlab.models import load_model, resolve_model
from reasonlab.prompt_format import build_prompt
from timing import timed

PROMPT = "The primary hormone regulating blood pressure is"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--contrastive", nargs=2, default=[" Ald", " Ren"])
    parser.add_argument("--repeats", type=int, default=3, help="every timing is the best of this many runs")
    parser.add_argument("--max-nodes", type=int, default=30)
    parser.add_argument("--ablate-top", type=int, default=20)
    parser.add_argument("--ig-steps", type=int, default=8)
    args = parser.parse_args()
    model, tokenizer = load_model(resolve_model(args.model))
    ids = A.encode_prompt(tokenizer, build_prompt(tokenizer, args.prompt, "chat", "", " Answer:"), "cpu")
    a, b = A.contrastive_ids(tokenizer, args.contrastive)

    def forward_backward():
        # one forward + one backward to the input embeddings: no parameter gradients, like act x grad
        with torch.enable_grad():
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            m = A.logit_diff(model(inputs_embeds=embeds).logits, a, b)[0]
            return torch.autograd.grad(m, [embeds])[0]

    def no_parameter_grads(what: str) -> None:
        held = [n for n, p in model.named_parameters() if p.grad is not None]
        if held:
            raise SystemExit(f"bench premise failed: {what} left parameter gradients ({held[:3]}...): "
                             "the ratio would compare different work")

    model.zero_grad(set_to_none=True)
    forward_backward()  # warm-up
    fb_s, _ = timed(forward_backward, args.repeats)
    no_parameter_grads("the baseline forward+backward")
    axg_s, axg = timed(lambda: A.act_x_grad(model, ids, a, b), args.repeats)
    no_parameter_grads("act x grad")
    ig_s, ig = timed(lambda: A.integrated_gradients(model, ids, a, b, args.ig_steps), args.repeats)
    graph_s, graph = timed(lambda: attribution_graph(model, tokenizer, args.prompt, args.contrastive,
                                                     max_nodes=args.max_nodes, ablate_top=args.ablate_top),
                           args.repeats)
    no_parameter_grads("integrated gradients and the graph")
    # credibility of each method on the same node set: the top-|I| nodes of each method, zero-ablated
    rhos = {}
    for name, attr in (("act_x_grad", axg), ("integrated_gradients", ig)):
        nodes = A.prune_nodes(attr.influence, 0.05, "max", args.ablate_top).nodes
        _, real = A.ablation_effects(model, ids, nodes, a, b)
        rhos[name] = A.rank_agreement([-float(attr.influence[n]) for n in nodes], real)
    rhos["graph"] = graph["ablation"]["spearman"]
    undefined = [name for name, rho in rhos.items() if rho is None]
    if undefined:
        raise SystemExit(f"bench premise failed: no rank correlation for {undefined} (fewer than 3 ablated nodes, "
                         f"or constant effects); raise --ablate-top or check the prompt")
    print(f"model={args.model}")
    print(f"repeats={args.repeats}")
    print(f"prompt_tokens={ids.shape[1]}")
    print(f"logit_diff={axg.metric:.4f}")
    print(f"forward_backward_s={fb_s:.3f}")
    print(f"act_x_grad_s={axg_s:.3f}")
    print(f"act_x_grad_x_forward_backward={axg_s / fb_s:.2f}")
    print(f"integrated_gradients_steps={args.ig_steps}")
    print(f"integrated_gradients_x_forward_backward={ig_s / fb_s:.2f}")
    print(f"graph_nodes={len(graph['nodes'])}")
    print(f"graph_total_s={graph_s:.3f}")
    print(f"graph_total_x_forward_backward={graph_s / fb_s:.2f}")
    print(f"spearman_act_x_grad_top{args.ablate_top}={rhos['act_x_grad']:.3f}")
    print(f"spearman_integrated_gradients_top{args.ablate_top}={rhos['integrated_gradients']:.3f}")
    print(f"spearman_graph_top{args.ablate_top}={rhos['graph']:.3f}")


if __name__ == "__main__":
    main()
