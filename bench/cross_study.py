"""Ad-hoc differences between arms of DIFFERENT studies, from committed run records.

    .venv/bin/python -m bench.cross_study [--records results/records] ARM BASE [ARM BASE ...]

An arm is `study/setting` or `study/setting@init` (the table's columns, e.g.
`headline_init_source/T=8 a=0.2/0.8/0@pretrained weights`). Prints the table
`distill_lab.comparisons` draws for docs/results.md's `comparisons=` regions (mean difference in dev
and test F1 with its 95 % Welch interval, mde80, both arms' runs); a pair worth keeping goes into
results/comparisons.yaml, which `make report-records` rebuilds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill_lab.comparisons import Comparison, comparison_table  # noqa: E402
from distill_lab.records import load_records  # noqa: E402
from distill_lab.report_table import seed_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default=str(ROOT / "results" / "records"))
    parser.add_argument("arms", nargs="+", help="ARM BASE pairs")
    args = parser.parse_args()
    if len(args.arms) % 2:
        parser.error("give arms in pairs: ARM BASE")
    pairs = [Comparison(f"{arm} vs {base}", arm, base) for arm, base in zip(args.arms[::2], args.arms[1::2])]
    sys.stdout.write(comparison_table(seed_rows(load_records(Path(args.records))), pairs))


if __name__ == "__main__":
    main()
