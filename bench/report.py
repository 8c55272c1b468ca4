"""Prints the markdown table of every bench/results/train_step_*.json.

    python bench/report.py > table.md
"""

import glob
import json
import os

paths = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "train_step_*.json")))
print("| backend | preset | parameters | batch | OT | median s/step | steps/s | samples/s | first step s | OT pairing ms/batch |")
print("|---|---|---|---|---|---|---|---|---|---|")
for path in paths:
    with open(path) as file:
        result = json.load(file)
    for run in result["runs"]:
        print(
            f"| {result['backend']} | {run['preset']} | {run['parameters'] / 1e6:.2f}M | {run['batch_size']} | "
            f"{'on' if run['ot'] else 'off'} | {run['median_step_seconds']:.3f} | {run['steps_per_second']:.3f} | "
            f"{run['samples_per_second']:.1f} | {run['first_step_seconds']:.1f} | "
            f"{1000 * result['median_ot_pairing_seconds_per_batch']:.1f} |"
        )
