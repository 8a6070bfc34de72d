"""Which texts each SFT experiment trains on: one experiment per target case (the concept-SFT study's design), or one joint.

A text-set file (`data/concept_texts.yaml`) gives, per target case (matched by its prompt), the concept
texts and controls of the same budget (same number of texts, similar length), any arm of the study by name
(`study.ARMS`; `reasonlab texts` writes such a file):

    cases:
      - prompt: "The primary hormone regulating blood pressure is"
        concept: "aldosterone is a hormone"
        neuron: null                 # the attribution node the concept comes from, when one was chosen
        texts: [...]
        controls:
          unrelated: {concept: "...", texts: [...]}     # an unrelated concept
          direct: {concept: "...", texts: [...]}        # the right answer stated directly, other contexts
          negated_wrong: {texts: [...]}                  # ... any other arm: concept_unguided, prompt, abstract

A case may have controls and no concept texts (`texts` left out), when its concept arm was skipped.

A case without an entry trains on the SFT config's `texts` (if any); otherwise it is skipped, with the
reason recorded.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from reasonlab.concept_sft.prompts import normalized
from reasonlab.concept_sft.study import ARMS
from reasonlab.errors import ReasonlabError, check_model
from reasonlab.io import read_structured

CONTROLS = tuple(arm for arm in ARMS if arm != "concept")
TEXT_SETS = ("concept", *CONTROLS)


class TextSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    concept: str | None = Field(None, description="what the texts teach")
    texts: list[str] = Field(min_length=1, description="the training texts")


class CaseTexts(TextSet):
    texts: list[str] = Field([], description="the concept texts (may be left out when the case has controls)")
    prompt: str = Field(description="the target case's prompt, as in the prompts file")
    neuron: str | None = Field(None, description="the attribution node the concept comes from (chosen, or null)")
    controls: dict[str, TextSet] = Field({}, description=f"control text sets by name: {', '.join(CONTROLS)}")

    @model_validator(mode="after")
    def _has_texts(self) -> CaseTexts:
        if not self.texts and not self.controls:
            raise ValueError("texts: a case needs concept texts or at least one control")
        return self


class TextSetFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cases: list[CaseTexts] = Field(min_length=1)


def load_text_sets(path: Path | str) -> dict[str, CaseTexts]:
    """normalized prompt -> its texts; one error naming the field for a malformed file."""
    parsed = check_model(TextSetFile, read_structured(path), f"text sets {path}")
    out: dict[str, CaseTexts] = {}
    for i, case in enumerate(parsed.cases):
        unknown = set(case.controls) - set(CONTROLS)
        if unknown:
            raise ReasonlabError(f"text sets {path} case {i}: unknown control(s) {sorted(unknown)}; use {CONTROLS}")
        if normalized(case.prompt) in out:
            raise ReasonlabError(f"text sets {path} case {i}: a second entry for {case.prompt!r}")
        out[normalized(case.prompt)] = case
    return out


def plan_experiments(cases: list[dict], text_sets: dict[str, CaseTexts], default_texts: list[str], *,
                     joint: bool = False, text_sets_wanted: tuple[str, ...] | list[str] = ("concept",),
                     neuron: str | None = None, concept: str | None = None) -> tuple[list[dict], list[dict]]:
    """(experiments, skipped). An experiment: {name, cases, text_set, concept, neuron, texts}.

    Per case (default): one experiment per wanted text set the case has (its concept texts; the controls).
    Joint: one experiment per text set over every case, its texts the cases' texts concatenated.
    `neuron`/`concept` (parameters) override the file's for the concept text set.
    """
    per_case, skipped = [], []
    for i, case in enumerate(cases):
        entry = text_sets.get(normalized(case["prompt"]))
        sets = {}
        if entry and entry.texts:
            sets["concept"] = {"concept": concept or entry.concept, "neuron": neuron or entry.neuron,
                               "texts": list(entry.texts)}
        if entry:
            sets |= {name: {"concept": c.concept, "neuron": None, "texts": list(c.texts)}
                     for name, c in entry.controls.items()}
        if entry is None and default_texts:
            sets["concept"] = {"concept": concept, "neuron": neuron, "texts": list(default_texts)}
        for name in [n for n in TEXT_SETS if n in text_sets_wanted and n not in sets]:
            skipped.append({"case": case["prompt"], "text_set": name,
                            "reason": "no training texts: add the case to the text-set file or to the SFT config"
                            if name == "concept" else f"the text-set file has no {name!r} control for this case"})
        sets = {n: sets[n] for n in TEXT_SETS if n in text_sets_wanted and n in sets}
        per_case.append((i, case, sets))
    if not joint:
        return [{"name": f"case{i}-{name}", "cases": [case], "text_set": name, **spec}
                for i, case, sets in per_case for name, spec in sets.items()], skipped
    experiments = []
    for name in TEXT_SETS:
        members = [(case, sets[name]) for _, case, sets in per_case if name in sets]
        if members:
            texts = list(dict.fromkeys(t for _, spec in members for t in spec["texts"]))
            experiments.append({"name": f"joint-{name}", "cases": [c for c, _ in members], "text_set": name,
                                "concept": "; ".join(filter(None, dict.fromkeys(s["concept"] for _, s in members)))
                                or None,
                                "neuron": None if name != "concept" else neuron, "texts": texts})
    return experiments, skipped
