"""reasonlab.io.read_rows: one reader of rows for every suffix, one error for everything else."""

import gzip
import json

import pandas as pd
import pytest
import yaml

from reasonlab.errors import ReasonlabError
from reasonlab.io import read_rows

ROWS = [{"a": 1, "b": "x"}, {"a": 2, "b": "y|z"}]


def test_every_suffix_gives_the_same_rows(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(ROWS))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n\n" for r in ROWS))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(ROWS))
    pd.DataFrame(ROWS).to_parquet(tmp_path / "r.parquet", index=False)
    pd.DataFrame(ROWS).to_csv(tmp_path / "r.csv", index=False)
    with gzip.open(tmp_path / "r.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in ROWS))
    for name in ("r.json", "r.jsonl", "r.yaml", "r.parquet", "r.csv", "r.jsonl.gz"):
        assert read_rows(tmp_path / name) == ROWS, name


def test_wrapped_lists_and_mappings(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"data": ROWS}))
    assert read_rows(tmp_path / "d.json", under=("questions", "data")) == ROWS
    (tmp_path / "m.json").write_text(json.dumps({"1": ROWS[0], "2": ROWS[1]}))
    assert read_rows(tmp_path / "m.json", values=True) == ROWS
    with pytest.raises(ReasonlabError, match=r"m.json: expected a list of rows \(or a mapping with a list under data\)"):
        read_rows(tmp_path / "m.json", under=("data",))


def test_bad_files_are_one_error_naming_the_file(tmp_path):
    (tmp_path / "r.txt").write_text("hello")
    with pytest.raises(ReasonlabError, match=r"r.txt: not a rows file \(the suffixes read are .jsonl, .json, "
                                             r".parquet, .csv, .yaml, .yml"):
        read_rows(tmp_path / "r.txt")
    with pytest.raises(ReasonlabError, match="nope.json: no such file"):
        read_rows(tmp_path / "nope.json")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ReasonlabError, match="bad.jsonl: line 2 is not JSON"):
        read_rows(tmp_path / "bad.jsonl")
    (tmp_path / "bad.json").write_text('[1,\n')
    with pytest.raises(ReasonlabError, match=r"bad.json: invalid JSON at line \d"):
        read_rows(tmp_path / "bad.json")
