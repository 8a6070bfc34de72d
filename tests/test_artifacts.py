"""Pictures visible in the UI: the image artifact's URL serves the PNG, and the local server's UI knows its API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prefect import flow

from ports import free_port
from deployments.server import start_file_server
from reasonlab import paths
from tasks.run_info import read_flow_run
from tasks.artifacts import SERVER_FILE, files_url, image_markdown, publish_image, publish_run_folder


def write_png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def test_image_artifact_url_serves_the_png(monkeypatch):
    png = write_png(paths.runs_dir() / "artifact test" / "plot.png")  # a space: the URL must be quoted
    files = start_file_server(paths.runs_dir())
    try:
        monkeypatch.setenv("REASONLAB_FILES_URL", f"http://127.0.0.1:{files.server_address[1]}/")

        @flow
        def publish() -> None:
            publish_image(png, key="test-plot", description="a plot")
            publish_run_folder(png.parent, key="test-run-folder", description="the run")

        state = publish(return_state=True)
        _, artifacts = asyncio.run(read_flow_run(state.state_details.flow_run_id))
        status, body = get(artifacts["test-plot"])  # an image artifact's data is its URL
        assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n", artifacts["test-plot"]
        link = artifacts["test-run-folder"]
        assert link.startswith("[") and "http://127.0.0.1:" in link, link  # markdown [text](url)
        folder_url = link[link.index("(") + 1:-1]
        assert "plot.png" in get(folder_url)[1].decode()
    finally:
        files.shutdown()


def test_without_a_file_server_the_markdown_says_how_to_see_the_picture(monkeypatch, tmp_path):
    monkeypatch.delenv("REASONLAB_FILES_URL", raising=False)
    png = paths.runs_dir() / "x" / "graph.png"
    record = paths.home() / SERVER_FILE
    assert not record.exists()
    assert "deployments.server" in image_markdown(png, "graph")
    record.write_text(json.dumps({"files_url": "http://127.0.0.1:9/"}))
    try:
        assert files_url() == "http://127.0.0.1:9"
        assert image_markdown(png, "graph") == "![graph](http://127.0.0.1:9/x/graph.png)"
        assert image_markdown(tmp_path / "outside.png", "graph").startswith("`")  # not under runs/: no URL
    finally:
        record.unlink()


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            if get(url)[0] == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def test_server_command_gives_the_ui_its_api_and_serves_run_files(tmp_path):
    """`python -m deployments.server --port P`: the UI's settings name http://127.0.0.1:P/api (a plain
    `prefect server start --port P` leaves the UI blank), and the run files are served at P+1."""
    port = free_port(span=2)  # the server's API at port, the run files at port + 1
    home = tmp_path / "home"
    write_png(home / "runs" / "r" / "p.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REASONLAB_"))}
    env.update(REASONLAB_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}")
    proc = subprocess.Popen([sys.executable, "-m", "deployments.server", "--port", str(port)], env=env,
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/api/health", proc)
        ui = json.loads(get(f"http://127.0.0.1:{port}/ui-settings")[1])
        assert ui["api_url"] == f"http://127.0.0.1:{port}/api"
        record = json.loads((home / SERVER_FILE).read_text())
        assert record["files_url"] == f"http://127.0.0.1:{port + 1}"
        assert get(f"{record['files_url']}/r/p.png")[1][:4] == b"\x89PNG"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert not (home / SERVER_FILE).exists(), "server.json left behind after the server stopped"
    assert "Traceback" not in out and "ERROR" not in out, out[-3000:]


def summary_row() -> dict:
    from reasonlab.concept_sft.edit_metrics import aggregate

    return aggregate(two_seeds())


def two_seeds() -> list[dict]:
    return [{"case": "The hormone is", "format": "chat", "answer": "aldosterone", "wrong_word": " renin",
              "text_set": "concept", "base_answer": " renin", "base_says_answer": 0.0, "base_paraphrase_nll": 0.25,
              "base_neighbourhood_nll": 1.0, "base_p_correct": 0.05, "base_p_wrong": 0.23, "base_top1": " ren",
              "says_answer": e, "efficacy_prob": e, "efficacy_nll": 1.0, "paraphrase_nll": 0.5,
              "paraphrases_newly_said": 0.5, "neighbourhood_nll": 0.8, "neighbours_leaked": 0.2,
              "neighbours_moved": 0.4, "ppl_change": 0.02, "p_correct": pc, "p_wrong": 0.10, "correct_gain": pc - 0.05}
             for e, pc in ((1.0, 0.31), (0.0, 0.09))]


def test_results_table_has_one_column_per_figure():
    from reasonlab.concept_sft.edit_metrics import results_markdown

    header, _, line = results_markdown([summary_row()]).splitlines()
    cells = dict(zip([h.strip() for h in header.strip("|").split("|")], [c.strip() for c in line.strip("|").split("|")]))
    assert cells["Base p(wrong)"] == "23.0%" and cells["Base p(correct)"] == "5.0%" and cells["Wrong"] == "renin"
    assert cells["SFT p(wrong)"] == "10.0% ± 0.0%" and cells["SFT p(correct)"] == "20.0% ± 15.6%"
    assert cells["Base answer (greedy)"] == "'renin'" and cells["SFT says the answer"] == "50% ± 71%"
    assert cells["Efficacy: p(correct) > p(wrong)"] == "50% ± 71%"
    assert cells["Efficacy (ROME): NLL/token correct < wrong"] == "100% ± 0%"
    assert cells["Paraphrases (ROME)"] == "50% ± 0%" and cells["Base paraphrases (ROME)"] == "25%"
    assert cells["Paraphrases newly said"] == "50% ± 0%"
    assert cells["Base neighbourhood (ROME)"] == "100%" and cells["Neighbourhood (ROME)"] == "80% ± 0%"
    assert cells["Neighbours leaked"] == "20% ± 0%" and cells["Neighbours moved"] == "40% ± 0%"
    assert cells["Perplexity change"] == "+2.0% ± 0.0%" and cells["Seeds"] == "2"
    assert cells["Gain beyond spread"] == "no" and cells["Verdict"] == "learned"
    assert "→" not in header + line


def test_the_report_leads_with_the_verdict_in_a_narrow_table_then_the_picture_then_every_figure(tmp_path):
    from reasonlab.concept_sft.report import plot_results, report_markdown

    row = summary_row()
    png = plot_results([row, {**row, "format": "completion"}], tmp_path / "r.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    md = report_markdown([row], "![base vs SFT](http://x/r.png)", ["- `case0-concept`: ..."], ["- skipped `x`: why"])
    head = md.split("\n## ", 1)[0]
    first_table = [line for line in head.splitlines() if line.startswith("|")]
    assert first_table[0].count("|") - 1 <= 7 and "Verdict" in first_table[0]
    assert "| learned | 50% | 50% | 80% |" in first_table[2]
    assert head.index("| Case") < head.index("![base vs SFT]")
    assert md.index("![base vs SFT]") < md.index("## Every figure") < md.index("## Experiments") < md.index("skipped")
