"""The property tests of tests/passes/test_passes_property.py, run much longer and with fresh randomness.

Random graphs mixing residuals, concat, depthwise, grouped convs, squeeze-excite and
flatten->Gemm; random plans (with dropped and emptied branches) and random dead filters.
Every rewrite must pass the checker, equal its reference on onnxruntime, and have the
predicted MACs. CI runs 200 (+100) derandomized examples; this runs N (+N/2) random ones.

    python benchmarks/passes_property_long.py [--examples 3000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import pytest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000)
    args = parser.parse_args(argv)
    os.environ["ONNXPRUNE_PROPERTY_EXAMPLES"] = str(args.examples)
    os.environ["ONNXPRUNE_PROPERTY_RANDOM"] = "1"
    test_file = Path(__file__).resolve().parents[1] / "tests" / "test_passes_property.py"
    start = time.perf_counter()
    status = pytest.main(["-q", "-p", "no:cacheprovider", str(test_file)])
    print(f"{args.examples} + {args.examples // 2} examples: {'passed' if status == 0 else 'FAILED'} "
          f"in {time.perf_counter() - start:.0f} s")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
