"""Command line: build one reference model and save it (for benchmarks and the demo).

    python -m models.build llama --preset small -o out/llama_small.onnx [--weights ternary]
    python -m models.build llama --preset 1b -o out/llama_1b.onnx --external-data
    python -m models.build bert -o out/bert.onnx --weights trained_like

Presets exist for llama (`tiny`, `small`, `1b`); bert and convnet build their default (tiny) config.
Prints the parameter count, the bytes written, the build-and-save time and the peak RSS (and what the
process held before building: the interpreter and its imports).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time
from collections.abc import Sequence
from pathlib import Path

from models import bert, convnet, llama
from models._onnx import require, save_model
from models.weights import WeightInit

__all__ = ["main"]

_BUILDERS = {
    "llama": (llama.build, llama.LlamaConfig),
    "bert": (bert.build, bert.BertConfig),
    "convnet": (convnet.build, convnet.ConvNetConfig),
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(_BUILDERS))
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--preset", help=f"llama only: {', '.join(llama.PRESETS)}")
    parser.add_argument("--weights", choices=[w.value for w in WeightInit], default=WeightInit.RANDOM.value)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--external-data", action="store_true", help="weights to <output>.data (needed past 2 GB)"
    )
    args = parser.parse_args(argv)

    build, config_type = _BUILDERS[args.model]
    changes = {"weights": WeightInit(args.weights), "seed": args.seed, "opset": args.opset}
    if args.preset is None:
        config = config_type(**changes)
    else:
        require(
            [] if args.model == "llama" else [f"--preset is for llama only, not {args.model}"], "models.build"
        )
        config = llama.LlamaConfig.preset(args.preset, **changes)
    before_mib = _peak_rss_mib()
    start = time.perf_counter()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_model(build(config), args.output, external_data=args.external_data)
    seconds = time.perf_counter() - start
    data = args.output.with_name(f"{args.output.name}.data")
    written = args.output.stat().st_size + (data.stat().st_size if args.external_data else 0)
    params = getattr(config, "num_parameters", None)
    print(f"{args.output}: {dataclasses.asdict(config)}")
    print(
        f"parameters {params if params is not None else 'n/a'}, {written / 2**20:.1f} MiB written, "
        f"{seconds:.1f} s, peak RSS {_peak_rss_mib():.0f} MiB ({before_mib:.0f} MiB before building)"
    )


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
