"""`refloop bench`: measure the product against a bare-Temporal baseline (see bench/)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the product against a bare-Temporal baseline; prints figures and ratios, writes JSON")
    p.add_argument("--loops", type=int, default=200, help="full loops per target for throughput (default 200)")
    p.add_argument("--concurrency", type=int, default=50, help="loops in flight (default 50)")
    p.add_argument("--probe-loops", type=int, default=5, help="latency: loops whose every event is a sample (default 5)")
    p.add_argument("--load-concurrency", type=int, default=20, help="background loops during the loaded latency probe (default 20)")
    p.add_argument("--load-fraction", type=float, default=0.5, help="background events/s as a fraction of the baseline's throughput (default 0.5)")
    p.add_argument("--open-loops", default="1000,5000", help="worker RSS at these open-loop counts (default 1000,5000)")
    p.add_argument("--history-sample", type=int, default=20, help="loops whose history is fetched (default 20)")
    p.add_argument("--mllp-service", default="", help="MODULE:FUNC of the HL7 MLLP gateway service (default: found in this build)")
    p.add_argument("--skip-mllp", action="store_true", help="do not measure through the HL7 MLLP gateway")
    p.add_argument("--db-url", default="", help="the product's SQL store (default: a SQLite file in a temp dir)")
    p.add_argument("--phases", default="latency,throughput,load,mllp,rss", help="what to measure (default: all)")
    p.add_argument("--targets", default="baseline,product", help="whom to measure (default: baseline,product)")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"), help="where the JSON goes (default bench/results)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from bench.harness import PHASES, Options, run
    from refloop.cli.main import CliError

    try:
        open_loops = [int(x) for x in args.open_loops.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--open-loops wants comma-separated counts, got {args.open_loops!r}") from None
    opts = Options(
        loops=args.loops,
        concurrency=args.concurrency,
        probe_loops=args.probe_loops,
        load_concurrency=args.load_concurrency,
        load_fraction=args.load_fraction,
        open_loops=open_loops,
        history_sample=args.history_sample,
        mllp_service=args.mllp_service,
        skip_mllp=args.skip_mllp,
        db_url=args.db_url,
        out_dir=args.out_dir,
        phases=_names(args.phases, PHASES, "--phases"),
        targets=_names(args.targets, ("baseline", "product"), "--targets"),
    )
    run(opts, echo=lambda s: print(s, flush=True))
    return 0


def _names(value: str, allowed, option: str) -> list[str]:
    from refloop.cli.main import CliError

    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise CliError(f"{option}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return names
