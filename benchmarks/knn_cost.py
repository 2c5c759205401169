"""Cost of the KNN estimator against an earlier revision of it (e.g. before exact duplicate distances).

Loads ``companion/method/estimators.py`` as it is now and as it was at ``--before`` (a git revision),
then times ``knn(x, k)`` of both, alternated, on random clouds of the given shapes; prints the best time
of each and their ratio.

    python benchmarks/knn_cost.py --before 1a9d041
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "companion/method/estimators.py"


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="1a9d041", help="git revision of the earlier estimator")
    parser.add_argument("--shapes", default="8x256x640,8x256x4096", help="comma-separated samples x tokens x dim")
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    old_source = subprocess.run(["git", "show", f"{args.before}:{SOURCE}"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        old_path = Path(folder) / "estimators_before.py"
        old_path.write_text(old_source)
        versions = {"before": _module(old_path, "estimators_before"), "now": _module(ROOT / SOURCE, "estimators_now")}
        for shape in args.shapes.split(","):
            dims = tuple(int(v) for v in shape.split("x"))
            x = torch.randn(*dims, generator=torch.Generator().manual_seed(0)) * 30
            times: dict[str, list[float]] = {name: [] for name in versions}
            for _ in range(args.repeats):
                for name, module in versions.items():
                    start = time.perf_counter()
                    module.knn(x, k=args.k)
                    times[name].append(time.perf_counter() - start)
            before, now = (min(times[name]) * 1000 for name in ("before", "now"))
            print(f"{shape}: before {before:.1f} ms, now {now:.1f} ms, ratio {now / before:.2f}")


if __name__ == "__main__":
    main()
