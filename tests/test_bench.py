"""The benchmark harness runs end to end on a few CPU cases and writes its
tables, so `make bench` does not rot between GPU sessions."""

from __future__ import annotations

import json

import pytest

from bench.__main__ import main


@pytest.mark.slow
def test_bench_quick_writes_results(tmp_path, capsys):
    assert (
        main(
            [
                "--quick",
                "--device",
                "cpu",
                "--op",
                "max_pool2d_with_offsets",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    (result,) = tmp_path.glob("*-quick.json")
    data = json.loads(result.read_text())
    assert data["meta"]["copy_gbps"] > 0
    assert data["meta"]["backends"] == ["cpu"]
    rows = data["rows"]
    assert {r["direction"] for r in rows} == {"forward", "forward+backward"}
    for row in rows:
        assert row["op"] == "max_pool2d_with_offsets"
        assert row["reference_ms"] > 0 and row["fastops_ms"]["cpu"] > 0
        assert row["speedup"] == pytest.approx(row["reference_ms"] / row["fastops_ms"]["cpu"])
    assert result.with_suffix(".md").read_text().count("| max_pool2d_with_offsets |") == len(rows)
    assert list(tmp_path.glob("*-quick-unpooling.png"))
    assert "max_pool2d_with_offsets" in capsys.readouterr().out


def test_merged_rows_keep_the_bandwidth_of_their_own_run(tmp_path):
    """With --op the other operators' rows are kept; their floor and % of copy use the
    copy bandwidth measured in the run that timed them, not the latest run's."""
    from bench.__main__ import markdown, merge_into_existing

    def row(op, gbps=None):
        r = {
            "op": op,
            "family": op,
            "case": "c",
            "shape": "s",
            "dtype": "float32",
            "direction": "forward",
            "variant": "",
            "min_bytes": 1e6,
            "reference_ms": 1.0,
            "fastops_ms": {"cpu": 0.5},
            "speedup": 2.0,
            "fastops_gbps": 2.0,
        }
        return r | ({"copy_gbps": gbps, "commit": "new"} if gbps else {})

    path = tmp_path / "results.json"
    meta = {"commit": "old", "copy_gbps": 10.0}
    path.write_text(json.dumps({"meta": meta, "rows": [row("kept")]}))
    new_meta = {"commit": "new", "copy_gbps": 20.0, "device": "d", "torch": "t", "triton": "t"}
    rows, merged_meta = merge_into_existing(path, [row("rerun", 20.0)], new_meta, ["rerun"])
    assert {r["op"]: r["copy_gbps"] for r in rows} == {"kept": 10.0, "rerun": 20.0}
    merged_meta |= {"cuda": None, "date": "now", "quick": False, "timing": "t"}
    table = markdown(merged_meta, rows)
    kept_line = next(line for line in table.splitlines() if line.startswith("| kept |"))
    rerun_line = next(line for line in table.splitlines() if line.startswith("| rerun |"))
    assert "| 0.100 |" in kept_line and "| 20% |" in kept_line  # 1 MB at 10 GB/s; 2 of 10 GB/s
    assert "| 0.050 |" in rerun_line and "| 10% |" in rerun_line
