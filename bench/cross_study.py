"""Differences between arms of DIFFERENT studies, from committed run records (docs' cross-study rows).

    .venv/bin/python -m bench.cross_study [--records results/records] ARM BASE [ARM BASE ...]

An arm is `study/setting` or `study/setting@init` (the table's columns, e.g.
`headline_init_source/T=8 a=0.2/0.8/0@pretrained weights`). For each ARM BASE pair: the mean
difference in dev and test F1 (F1 points) with its 95 % Welch interval over the two arms' seeds,
and the smallest difference the seeds detect with 80 % power. The report's own comparisons stay
within one study; these are the pairs docs/results.md compares across studies that share a teacher.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill_lab.analysis import detectable_difference, welch_interval  # noqa: E402
from distill_lab.records import load_records  # noqa: E402
from distill_lab.report_table import seed_rows  # noqa: E402


def arm_scores(rows, arm: str) -> tuple[np.ndarray, np.ndarray]:
    study, _, rest = arm.partition("/")
    setting, _, init = rest.rpartition("@")
    if init not in set(rows.loc[rows["study"] == study, "init"]):  # an '@' of the setting (soft@subtokens)
        setting, init = rest, ""
    chosen = rows[(rows["study"] == study) & (rows["setting"] == setting)]
    if init:
        chosen = chosen[chosen["init"] == init]
    # One trial run holds every seed; a reference recipe (TextBrewer's) is one run per seed.
    if chosen.empty or chosen["seed"].duplicated().any():
        options = sorted(set(rows.loc[rows["study"] == study, "setting"] + "@" + rows.loc[rows["study"] == study, "init"]))
        raise SystemExit(f"{arm!r}: {len(chosen)} seed rows of {chosen['run_id'].nunique()} runs match (this study's setting/init: {options})")
    chosen = chosen.sort_values("seed")
    return chosen["dev_f1"].to_numpy() * 100, chosen["test_f1"].to_numpy() * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default=str(ROOT / "results" / "records"))
    parser.add_argument("arms", nargs="+", help="ARM BASE pairs")
    args = parser.parse_args()
    if len(args.arms) % 2:
        parser.error("give arms in pairs: ARM BASE")
    rows = seed_rows(load_records(Path(args.records)))
    print("| arm | vs | dev F1 diff [95 % Welch] | mde80 | test F1 diff [95 % Welch] |")
    print("|---|---|---|---|---|")
    for arm, base in zip(args.arms[::2], args.arms[1::2]):
        (dev, test), (base_dev, base_test) = arm_scores(rows, arm), arm_scores(rows, base)
        dev_low, dev_high = welch_interval(dev, base_dev)
        test_low, test_high = welch_interval(test, base_test)
        print(f"| {arm} | {base} | {dev.mean() - base_dev.mean():+.2f} [{dev_low:+.2f}, {dev_high:+.2f}] | "
              f"{detectable_difference(dev, base_dev):.2f} | "
              f"{test.mean() - base_test.mean():+.2f} [{test_low:+.2f}, {test_high:+.2f}] |")


if __name__ == "__main__":
    main()
