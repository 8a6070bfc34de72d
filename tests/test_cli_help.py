"""Every flow's `--help`, as a user runs it (a real subprocess): every flag has help text and says its default."""

import re
import subprocess
import sys

import pytest

FLOWS = ["concept_sft", "activation_baseline", "dspy_compile", "instruction_retrieval", "three_stage", "sweep"]


def help_entries(text: str) -> dict[str, str]:
    """{flag: its help text} from argparse's --help output (an entry runs until the next flag or a blank line)."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^  (-{1,2}[\w-]+)", line)
        if m:
            current = m.group(1)
            entries[current] = line.strip()
        elif current and line.startswith("   ") and line.strip():
            entries[current] += "\n" + line.strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    return entries


def flag_help(entry: str) -> str:
    """The help text after the flag and its metavar (argparse puts it after two or more spaces)."""
    first, _, rest = entry.partition("\n")
    parts = re.split(r"\s{2,}", first, maxsplit=1)
    return " ".join([parts[1] if len(parts) > 1 else "", rest.replace("\n", " ")]).strip()


def test_help_parsing_sees_a_flag_without_help():
    text = ("options:\n  -h, --help  show this\n  --bare BARE\n  --good GOOD  some words (default: 3)\n"
            "  --a-very-long-flag LONG\n                        on the next line (default: x)\n")
    entries = help_entries(text)
    assert flag_help(entries["--bare"]) == "" and "default: 3" in flag_help(entries["--good"])
    assert flag_help(entries["--a-very-long-flag"]) == "on the next line (default: x)"


@pytest.mark.parametrize("flow", FLOWS)
def test_every_flag_has_help_and_a_default(flow):
    out = subprocess.run([sys.executable, "-m", f"flows.{flow}", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    entries = {k: v for k, v in help_entries(out.stdout).items() if k not in ("-h", "--help")}
    assert len(entries) >= 1, out.stdout
    no_help = [k for k, v in entries.items() if not flag_help(v)]
    no_default = [k for k, v in entries.items() if flag_help(v) and "default" not in v.lower()
                  and "the same as leaving" not in v]
    assert not no_help, f"flows.{flow}: flags without help: {no_help}"
    assert not no_default, f"flows.{flow}: flags whose help does not say the default: {no_default}"
    doubled = [k for k, v in entries.items() if v.lower().count("default:") > 1]
    assert not doubled, f"flows.{flow}: a default printed twice: {doubled}"


@pytest.mark.parametrize("argv", [["concept-sft", "filter", "--help"], ["filter", "--help"],
                                  ["instruction-retrieval", "library", "generate", "--help"],
                                  ["library", "generate", "--help"]])
def test_stage_commands_sit_under_their_pipeline_and_the_old_spellings_still_work(argv):
    out = subprocess.run([sys.executable, "-m", "reasonlab.cli", *argv], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage: reasonlab " + " ".join(
        ["concept-sft" if argv[0] == "filter" else "instruction-retrieval" if argv[0] == "library" else "", *argv[:-1]]
    ).replace("  ", " ").strip().replace("reasonlab ", "", 0))
