"""The `bitnet-onnx` command line. It owns logging set-up and exit codes: a MixedPrecisionError
prints its message (the traceback only with --debug) and exits 2; anything else is a bug and exits 1
with the traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from bitnet_onnx.errors import MixedPrecisionError

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2


def _cmd_info(args: argparse.Namespace) -> int:
    from bitnet_onnx.info import describe, gather

    info = gather()
    print(describe(info))
    return EXIT_OK if info.library_loads else EXIT_USER_ERROR


def _cmd_bench(args: argparse.Namespace) -> int:
    from bitnet_onnx.bench import kernels

    return kernels.main(args.bench_args)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitnet-onnx",
        description="Compile ONNX models to BitNet-style mixed precision and run them in onnxruntime.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log one line per pass")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="op library, onnxruntime version, CPU features and kernel paths")
    info.set_defaults(run=_cmd_info)

    bench = sub.add_parser("bench", help="benchmarks (bench kernels --help for options)")
    bench.add_argument("suite", choices=["kernels"])
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options passed to the suite")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except MixedPrecisionError as exc:
        if args.debug:
            logger.exception("%s failed", args.command)
        print(f"bitnet-onnx {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"bitnet-onnx {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
