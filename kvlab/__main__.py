"""Command line: `python -m kvlab models | prepare | generate | bench`."""

from __future__ import annotations

import argparse
import statistics
import sys

from . import bench as bench_mod
from .models import REGISTRY, ModelError


def cmd_models(args) -> int:
    from .models import available

    print(f"{'name':<20}{'kind':<9}{'here':<6}note")
    for name, kind, ok, note in available():
        print(f"{name:<20}{kind:<9}{'yes' if ok else 'no':<6}{note}")
    return 0


def cmd_prepare(args) -> int:
    from .models import prepare_models

    names = list(REGISTRY) if args.all else args.names
    if not names:
        print("name at least one model, or --all", file=sys.stderr)
        return 2
    results = prepare_models(names, args.to)
    for name, _, message in results:
        print(f"{name}: {message}")
    where = f"KVLAB_HOME={args.to}" if args.to else "the default caches"
    print(f"models are in {where}")
    return 0 if all(ok for _, ok, _ in results) else 1


def cmd_generate(args) -> int:
    from .generate import generate
    from .models import load

    lm = load(args.model)
    result = generate(lm, args.prompt, args.n, cache=not args.no_cache,
                      temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(args.prompt + result.text)
    steps_ms = [t * 1e3 for t in result.step_times_s]
    later = steps_ms[1:] or steps_ms
    print(f"\n{len(result.new_ids)} tokens, {'with' if not args.no_cache else 'without'} "
          f"KV cache: first step (prefill of {len(result.prompt_ids)} prompt tokens) "
          f"{steps_ms[0]:.1f} ms, then {statistics.median(later):.1f} ms per token (median)")
    return 0


def cmd_bench(args) -> int:
    from pathlib import Path

    from .models import load

    for path in (args.json, args.csv):  # refuse a bad output path before the long run
        if path and not Path(path).resolve().parent.is_dir():
            raise ValueError(f"cannot save to {path}: folder {Path(path).parent} does not exist")
    lm = load(args.model)
    report = bench_mod.benchmark(lm, args.prompt_len, args.new_tokens, args.repeats,
                                 modes=args.modes, device=args.device)
    print(bench_mod.report_summary(report))
    if args.json:
        report.save_json(args.json)
        print(f"saved {args.json}")
    if args.csv:
        from .results import save_csv

        save_csv(report, args.csv)
        print(f"saved {args.csv}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kvlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the model registry and what is available here")

    prep = sub.add_parser("prepare", help="fetch or convert models into the local caches")
    prep.add_argument("names", nargs="*", help="registry names or hub ids")
    prep.add_argument("--all", action="store_true", help="every registry model")
    prep.add_argument("--to", default=None, help="folder to fill (default: the usual caches)")

    gen = sub.add_parser("generate", help="continue a prompt with kvlab's decode loop")
    gen.add_argument("model")
    gen.add_argument("prompt")
    gen.add_argument("-n", type=int, default=32, help="new tokens (default 32)")
    gen.add_argument("--no-cache", action="store_true", help="recompute everything each step")
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("bench", help="time cached/uncached decoding against transformers")
    b.add_argument("model")
    b.add_argument("--prompt-len", type=int, default=32)
    b.add_argument("--new-tokens", type=int, default=256)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--modes", nargs="+", default=list(bench_mod.MODES),
                   choices=list(bench_mod.MODES))
    b.add_argument("--json", default=None, help="also save the results as JSON")
    b.add_argument("--csv", default=None, help="also save the results as CSV (a row per step)")
    b.add_argument("--device", default=None, help="cpu or cuda (default: where the model is)")
    return parser


COMMANDS = {"models": cmd_models, "prepare": cmd_prepare, "generate": cmd_generate,
            "bench": cmd_bench}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ModelError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
