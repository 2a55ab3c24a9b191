"""The figures of ``bench/gpu_check.sh`` against issue 15's goals, in one file: ``<dir>/gpu.json``.

  python bench/gpu_check.py DIR     # DIR holds inference/, full/, lora/ as gpu_check.sh wrote them

A part that did not finish (time limit, out of memory) is reported as missing, naming its folder;
the others still count. Commit the result as docs/results/gpu.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOALS = {"chunk_p50_ms": 15.0, "sf_cache_ratio": 1.05, "samples_per_s": 20.0}
#: Which latency counts for the goal: the fastest deployed path that ran.
DEPLOYED = ("compiled", "ours")


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training(figures: dict | None) -> dict | None:
    """Per variant: median step ms, samples/s, peak GB, ratio to the baseline."""
    if figures is None:
        return None
    batch = figures["batch_size"]
    out = {"device": figures.get("device_name"), "batch_size": batch, "variants": {}}
    for name, entry in figures["variants"].items():
        step = entry.get("step_ms", {}).get("median")
        out["variants"][name] = {
            "error": entry.get("error"), "step_ms": step,
            "samples_per_s": round(1e3 * batch / step, 2) if step else None,
            "ratio_to_baseline": entry.get("ratio_to_baseline"),
            "peak_allocated_gb": round(entry["cuda_peak_allocated_mib"] / 1024, 1)
            if "cuda_peak_allocated_mib" in entry else None}
    return out


def exits(directory: Path) -> dict[str, int]:
    """Each part's exit status, from the "== part: exit N" lines gpu_check.sh logs (124: time limit)."""
    try:
        lines = (directory / "log.txt").read_text().splitlines()
    except OSError:
        return {}
    return {line[3:].split(":")[0]: int(line.rsplit(" ", 1)[1]) for line in lines
            if line.startswith("== ") and ": exit " in line}


def summarise(directory: Path) -> dict:
    inference = _load(directory / "inference" / "inference.json")
    full = training(_load(directory / "full" / "train_step.json"))
    lora = training(_load(directory / "lora" / "train_step.json"))
    missing = [name for name, part in (("inference", inference), ("full", full), ("lora", lora)) if part is None]
    chunk = None
    if inference is not None:
        path = next((p for p in DEPLOYED if p in inference["latency_ms"]), None)
        chunk = {"path": path, "p50_ms": inference["latency_ms"][path]["p50"], **inference}
    sf = (full or {}).get("variants", {}).get("sf_cache", {})
    base = (full or {}).get("variants", {}).get("baseline", {})
    measured = {"chunk_p50_ms": chunk and chunk["p50_ms"], "sf_cache_ratio": sf.get("ratio_to_baseline"),
                "samples_per_s": sf.get("samples_per_s") or base.get("samples_per_s")}
    # The goals are for π0 at full size on a GPU; the smoke run's tiny CPU figures only show the plumbing.
    judged = (inference or {}).get("preset", "full") == "full"
    goals = {name: {"goal": goal, "measured": measured[name],
                    "met": None if measured[name] is None or not judged else
                    (measured[name] >= goal if name == "samples_per_s" else measured[name] <= goal)}
             for name, goal in GOALS.items()}
    return {"goals": goals, "judged": judged, "exits": exits(directory), "inference": chunk,
            "full_fine_tuning": full, "lora": lora,
            "missing": [f"{directory / name}: no result (see log.txt)" for name in missing]}


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path("bench/results/gpu")
    result = summarise(directory)
    (directory / "gpu.json").write_text(json.dumps(result, indent=2))
    for name, goal in result["goals"].items():
        verdict = {True: "met", False: "NOT met", None: "not measured" if result["judged"] else
                   "not judged (tiny preset: the plumbing only)"}[goal["met"]]
        print(f"{name}: {goal['measured']} (goal {goal['goal']}): {verdict}")
    parts = [f"{name} {'ok' if code == 0 else f'exit {code}'}" for name, code in result["exits"].items()]
    print("parts:", ", ".join(parts))
    for line in result["missing"]:
        print(f"missing: {line}")
    print(f"written: {directory / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
