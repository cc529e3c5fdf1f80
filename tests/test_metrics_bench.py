"""The faithfulness benchmark's harness and tables, on the toy network (no timing is asserted)."""

from __future__ import annotations

import pytest
from test_metrics import FENS, random_toy


def test_evaluate_net_and_markdown() -> None:
    pytest.importorskip("lczerolens.lenses")
    from benchmarks import bench_faithfulness as bench

    net = random_toy(11)
    targets = bench.evaluate_net(net, FENS[:5])
    assert set(targets) == {"move", "value"}
    for t in targets.values():
        assert set(t["methods"]) == set(bench.METHOD_LABELS)
        # The toy net has no convolutions: the gamma composite does not apply there, and says so.
        assert t["methods"]["lrp_gamma"] == {"skipped": "n/a: no convolutions"}
        for name, row in t["methods"].items():
            if name == "lrp_gamma":
                continue
            assert "error" not in row, row
            assert row["abpc"]["low"] <= row["abpc"]["mean"] <= row["abpc"]["high"]
        # A linear net without convolutions: epsilon-LRP and the default (ATTENTION_DEFAULT) are gradient x input.
        for lrp in ("lrp_epsilon", "lrp_default"):
            assert t["methods"][lrp]["abpc"] == pytest.approx(t["methods"]["gradient_x_input"]["abpc"])
        assert set(t["paired"]) == {
            f"{lrp} - {b}"
            for lrp in ("lrp_default", "lrp_default_conserving")
            for b in ("occlusion", "lrp_epsilon", "gradient_x_input")
        }
    result = {
        "encoding": "FEN-only",
        "position_set": "toy",
        "nets": {"toy": {"positions": 5, "description": "toy", "note": "toy", "targets": targets}},
    }
    text = bench.to_markdown(result)
    assert "| gradient x input |" in text and "lrp_default - occlusion" in text
    assert "n/a: no convolutions" in text
    assert text.count("ABPC toy,") == 2


def test_dict_table_escapes_pipes() -> None:
    from benchmarks.run import dict_table

    table = dict_table({"a": {"max |x|": 1.5, "n": 3}, "note": "p|q"})
    assert "| a / max \\|x\\| | 1.5 |" in table
    assert "| a / n | 3 |" in table and "p\\|q" in table
    assert dict_table({"markdown": "as is"}) == "as is"
