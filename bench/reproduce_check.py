"""Did a regeneration reproduce the published tables? Compare the report regions of two results files.

    python -m bench.reproduce_check docs/results.md /path/to/fresh/docs/results.md [--out check.md]

Reads every `distill-lab:report` region's main table (the rows `distill-lab report --update` writes)
from both files, matches rows on (study, teacher / student, setting, init), and prints one markdown
row per match: published dev F1 (mean ± std, n), regenerated dev F1, the difference, and whether it
lies within the published std (for n=1 rows, whose std is 0, only an identical score passes). Test
F1 is compared the same way. Rows present in only one file are listed, so a run that dropped or
added arms does not pass silently. Exit status 1 when any matched row is outside its std.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

REGION = re.compile(r"<!-- distill-lab:report:begin[^>]*-->(.*?)<!-- distill-lab:report:end -->", re.S)
# "mean ± std (n=N)"; one seed is written without a spread ("mean (n=1)", or "mean" for test F1).
SCORE = re.compile(r"^\s*(-?\d+\.\d+)(?: ± (\d+\.\d+))?(?: \(n=(\d+)\))?\s*$")
KEYS = ["study", "teacher / student", "setting", "init"]


def report_rows(text: str) -> pd.DataFrame:
    """The main table of every report region (the first table after each begin marker)."""
    records = []
    for region in REGION.findall(text):
        lines = region.strip().splitlines()
        table = []
        for line in lines:
            if not line.startswith("|"):
                if table:
                    break
                continue
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        if len(table) < 3 or "score (dev F1)" not in table[0]:
            continue
        header = table[0]
        for cells in table[2:]:
            row = dict(zip(header, cells))
            dev, test = SCORE.match(row["score (dev F1)"]), SCORE.match(row["test F1"])
            if not dev or not test:
                raise ValueError(f"unreadable score cells in row {cells}")
            records.append({**{key: row[key] for key in KEYS}, "dev": float(dev[1]), "dev_std": float(dev[2] or 0),
                            "n": int(dev[3] or 1), "test": float(test[1]), "test_std": float(test[2] or 0)})
    frame = pd.DataFrame(records, columns=[*KEYS, "dev", "dev_std", "n", "test", "test_std"])
    return frame.drop_duplicates(KEYS)


def compare(published: pd.DataFrame, regenerated: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    merged = published.merge(regenerated, on=KEYS, how="outer", suffixes=("_pub", "_new"), indicator=True)
    both = merged[merged["_merge"] == "both"].copy()
    for score in ("dev", "test"):
        both[f"{score}_diff"] = both[f"{score}_new"] - both[f"{score}_pub"]
        # Scores are printed to 2 decimals: a difference of up to 0.01 is rounding.
        both[f"{score}_ok"] = both[f"{score}_diff"].abs() <= both[f"{score}_std_pub"] + 0.011
    unmatched = merged[merged["_merge"] != "both"][[*KEYS, "_merge"]]
    return both, unmatched


def markdown(both: pd.DataFrame, unmatched: pd.DataFrame) -> str:
    def pm(mean: float, std: float) -> str:
        return f"{mean:.2f} ± {std:.2f}"

    rows = pd.DataFrame({
        "study": both["study"], "teacher / student": both["teacher / student"], "setting": both["setting"],
        "init": both["init"], "n": both["n_pub"].astype(int),
        "published dev F1": [pm(m, s) for m, s in zip(both["dev_pub"], both["dev_std_pub"])],
        "regenerated dev F1": [pm(m, s) for m, s in zip(both["dev_new"], both["dev_std_new"])],
        "Δ dev": both["dev_diff"].map(lambda v: f"{v:+.2f}"),
        "within std (dev)": both["dev_ok"].map({True: "yes", False: "**no**"}),
        "Δ test": both["test_diff"].map(lambda v: f"{v:+.2f}"),
        "within std (test)": both["test_ok"].map({True: "yes", False: "**no**"}),
    })
    text = rows.to_markdown(index=False, disable_numparse=True)
    text += (f"\n\n{int(both['dev_ok'].sum())} of {len(both)} rows within the published std on dev F1, "
             f"{int(both['test_ok'].sum())} of {len(both)} on test F1.\n")
    if not unmatched.empty:
        side = unmatched["_merge"].map({"left_only": "published only", "right_only": "regenerated only"})
        listed = unmatched.assign(where=side)[[*KEYS, "where"]]
        text += "\nRows without a counterpart:\n\n" + listed.to_markdown(index=False) + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("published", type=Path)
    parser.add_argument("regenerated", type=Path)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)
    both, unmatched = compare(report_rows(args.published.read_text(encoding="utf-8")),
                              report_rows(args.regenerated.read_text(encoding="utf-8")))
    if both.empty:
        print("no report rows in common", file=sys.stderr)
        return 1
    text = markdown(both, unmatched)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0 if bool(both["dev_ok"].all() and both["test_ok"].all()) else 1


if __name__ == "__main__":
    sys.exit(main())
