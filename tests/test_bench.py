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
