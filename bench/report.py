"""Ratios product/baseline, the targets, and the printed table."""

from __future__ import annotations

# (label, path into a target's figures, target rule, limit); rule "min": ratio >= limit, "max": ratio <= limit.
RATIO_FIGURES = [
    ("loops/s (client)", ("throughput", "loops_per_s"), "min", 0.8),
    ("events/s (client)", ("throughput", "events_per_s"), "min", 0.8),
    ("latency idle p50", ("latency_idle", "p50_ms"), None, None),
    ("latency idle p95", ("latency_idle", "p95_ms"), "max", 1.5),
    ("latency under load p50", ("latency_load", "p50_ms"), None, None),
    ("latency under load p95", ("latency_load", "p95_ms"), "max", 1.5),
    ("history events / event, flat out", ("history", "per_applied_event"), None, None),
    ("history events / event, one at a time", ("history_spaced", "per_applied_event"), None, None),
    ("worker RSS idle (MB)", ("rss", "idle_mb"), None, None),
]
HISTORY_LIMIT = 4.0  # absolute target: history events per applied event


def _get(figures: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(figures, dict) or key not in figures:
            return None
        figures = figures[key]
    return figures


def _rows(figures: dict) -> list[tuple[str, object, object, str | None, float | None]]:
    """(label, product value, baseline value, rule, limit) for every compared figure."""
    p, b = figures["product"], figures["baseline"]
    rows = [(label, _get(p, path), _get(b, path), rule, limit) for label, path, rule, limit in RATIO_FIGURES]
    for count in sorted(_get(p, ("rss", "open_loops")) or {}, key=int):
        path = ("rss", "open_loops", count, "rss_mb")
        rows.append((f"worker RSS, {count} open loops (MB)", _get(p, path), _get(b, path), None, None))
    if _get(p, ("mllp", "available")):
        rows.append(("events/s (HL7 MLLP gateway)", _get(p, ("mllp", "events_per_s")), _get(b, ("throughput", "events_per_s")), None, None))
    return rows


def ratios(figures: dict) -> dict:
    out: dict = {}
    for label, pv, bv, rule, limit in _rows(figures):
        ratio = round(pv / bv, 2) if isinstance(pv, (int, float)) and isinstance(bv, (int, float)) and bv else None
        entry: dict = {"product": pv, "baseline": bv, "ratio": ratio}
        if rule and ratio is not None:
            entry["target"] = f"{'>=' if rule == 'min' else '<='} {limit}x baseline"
            entry["met"] = ratio >= limit if rule == "min" else ratio <= limit
        out[label] = entry
    for label in ("history events / event, flat out", "history events / event, one at a time"):
        entry = out[label]
        if entry["product"] is not None:
            entry["target"] = f"<= {HISTORY_LIMIT} (absolute)"
            entry["met"] = entry["product"] <= HISTORY_LIMIT
    return out


def render(result: dict) -> str:
    m = result["machine"]
    lines = [
        "",
        f"refloop bench — {m['cpus']} CPUs, {m['os']}, Python {m['python']}, temporalio {m['temporalio']}, {m['temporal_cli'].splitlines()[0] if m['temporal_cli'] else ''}",
        f"{'figure':<38}{'product':>12}{'baseline':>12}{'ratio':>9}  target",
    ]
    for label, e in result["ratios"].items():  # empty when only one target ran
        target = ""
        if "target" in e:
            target = f"{e['target']}: {'met' if e['met'] else 'MISSED'}"
        ratio = f"{e['ratio']:.2f}x" if e["ratio"] is not None else "-"
        lines.append(f"{label:<38}{_fmt(e['product']):>12}{_fmt(e['baseline']):>12}{ratio:>9}  {target}")
    mllp = result["figures"].get("product", {}).get("mllp")
    if mllp is None:
        pass
    elif not mllp.get("available"):
        lines.append(f"HL7 MLLP gateway: {mllp.get('reason', 'not measured')}")
    else:
        if mllp.get("failures"):
            lines.append(f"HL7 MLLP gateway: {mllp['failures']} loops did not complete; first negative ACKs: {mllp['negative_acks'][:2]}")
        if mllp.get("parked_after_run"):
            lines.append(f"HL7 MLLP gateway: {mllp['parked_after_run']} messages still parked after the run")
    for name, f in result["figures"].items():
        bad = (f.get("throughput", {}).get("failures") or 0) + sum(v.get("failures", 0) for v in f.get("rss", {}).get("open_loops", {}).values())
        if bad:
            lines.append(f"WARNING: {bad} {name} loops did not settle in time")
    lines.append(f"run took {result.get('seconds', '?')} s")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
