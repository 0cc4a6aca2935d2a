"""python -m bench [--only NAME ...] [--quick] [--rounds N] [--profile] [--report]

Runs the benchmarks (all, or those named), writes each one's results to
``bench/results/NAME.json`` and rewrites ``BENCHMARKS.md`` from every result
present. ``--report`` only rewrites BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import catalog, cstore, data, harness, importing, prefetch, report, stow, transition
from bench import plan, retrieve, verify, wado
from bench import audit
from bench import analytics
from bench import encryption
from bench import dashboard

MODULES = [cstore, stow, importing, catalog, transition, prefetch, wado, retrieve, plan, verify, audit, encryption, analytics, dashboard]
BY_NAME = {m.NAME: m for m in MODULES}
QUICK_INSTANCES = 250


@dataclass
class Context:
    quick: bool
    rounds: int
    profile: bool
    instances: int | None = None
    _data: Any = field(default=None, repr=False)

    def dataset(self) -> data.DataSet:
        if self._data is None:
            full = data.ensure_dataset()
            n = self.instances or (QUICK_INSTANCES if self.quick else full.count)
            self._data = data.subset_folder(full, n)
        return self._data

    def log(self, msg: str) -> None:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks and atexit: servers are stopped by pid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=sorted(BY_NAME), metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(BY_NAME)}")
    ap.add_argument("--quick", action="store_true",
                    help=f"small sizes ({QUICK_INSTANCES} instances, 100k catalog studies), one round")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of the ingest benchmarks (default 3, quick 1)")
    ap.add_argument("--instances", type=int, default=None, help="send only the first N of the 1,000 instances")
    ap.add_argument("--profile", action="store_true", help="also profile ilm serve with py-spy during C-STORE")
    ap.add_argument("--report", action="store_true", help="only rewrite BENCHMARKS.md from bench/results/")
    ap.add_argument("--output", type=Path, default=harness.REPO / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.report:
        ctx = Context(quick=args.quick, rounds=args.rounds or (1 if args.quick else 3), profile=args.profile,
                      instances=args.instances)
        failed = []
        t_all = time.monotonic()
        for mod in [BY_NAME[n] for n in args.only] if args.only else MODULES:
            started = datetime.now(timezone.utc)
            ctx.log(f"== {mod.NAME}: {mod.TITLE}")
            machine = harness.machine_info()
            t0 = time.monotonic()
            try:
                res = mod.run(ctx)
            except Exception:
                traceback.print_exc()
                failed.append(mod.NAME)
                continue
            res.setdefault("n_rounds", ctx.rounds)
            res.update(name=mod.NAME, quick=args.quick, machine=machine,
                       started=started.strftime("%Y-%m-%d %H:%M UTC"),
                       finished=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                       elapsed_s=round(time.monotonic() - t0, 1))
            (harness.RESULTS / f"{mod.NAME}.json").write_text(json.dumps(res, indent=1, default=str))
            ctx.log(f"== {mod.NAME} done in {res['elapsed_s']:.0f} s")
            report.write_report(harness.RESULTS, args.output, MODULES)
        ctx.log(f"all done in {time.monotonic() - t_all:.0f} s; wrote {args.output}")
        if failed:
            print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
            return 1
    report.write_report(harness.RESULTS, args.output, MODULES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
