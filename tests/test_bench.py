"""`refloop bench` at a tiny size: it runs end to end and its JSON has every figure (the values
are measured and reported, never asserted: no timed tests)."""

from __future__ import annotations

import json

from refloop.cli.main import main

FIGURES = {
    "latency_idle": ("p50_ms", "p95_ms"),
    "history_spaced": ("per_applied_event",),
    "throughput": ("loops_per_s", "events_per_s"),
    "history": ("per_applied_event", "history_events", "applied_events"),
    "latency_load": ("p50_ms", "p95_ms", "background_events_per_s_offered"),
    "rss": ("idle_mb",),
}


def test_bench_produces_every_figure(tmp_path, capsys):
    argv = ["bench", "--loops", "5", "--concurrency", "5", "--probe-loops", "1", "--load-concurrency", "2"]
    argv += ["--open-loops", "5,10", "--history-sample", "3", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    (path,) = tmp_path.glob("bench-*.json")
    result = json.loads(path.read_text())

    for target in ("baseline", "product"):
        figures = result["figures"][target]
        for figure, keys in FIGURES.items():
            for key in keys:
                assert isinstance(figures[figure][key], (int, float)), (target, figure, key)
        assert figures["throughput"]["failures"] == 0
        assert figures["history"]["applied_events"] == 3 * 10  # every event of every sampled loop applied
        assert {k: v["failures"] for k, v in figures["rss"]["open_loops"].items()} == {"5": 0, "10": 0}
        assert all(isinstance(v["rss_mb"], float) for v in figures["rss"]["open_loops"].values())

    mllp = result["figures"]["product"]["mllp"]
    assert mllp["available"], mllp  # this build has the HL7 gateway
    assert mllp["failures"] == 0 and mllp["negative_acks"] == [] and mllp["parked_after_run"] == 0
    assert mllp["events_per_s"] > 0

    ratios = result["ratios"]
    for label, entry in ratios.items():
        assert entry["ratio"] is not None, label
    targets = {label: entry["met"] for label, entry in ratios.items() if "target" in entry}
    assert set(targets) == {
        "loops/s (client)",
        "events/s (client)",
        "latency idle p95",
        "latency under load p95",
        "history events / event, flat out",
        "history events / event, one at a time",
    }
    assert result["machine"]["cpus"] and result["machine"]["python"]

    printed = capsys.readouterr().out
    for label in ratios:
        assert label in printed  # the table shows every figure with its ratio
    assert str(path) in printed
