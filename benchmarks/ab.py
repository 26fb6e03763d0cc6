"""sam_jax at two commits, interleaved in one run: is a change free of speed regressions?

    python benchmarks/ab.py --baseline REV [--rounds 3] [--model vit_b] [--threads N] [--workdir DIR]

Checks ``REV`` out into ``DIR/baseline`` (``git worktree``), then alternates the ``ours.py``
worker of the baseline tree and of this tree, ``--rounds`` times each (A B A B ...), so that both
see the same machine minute by minute. Each worker loads the fixture weights, times the image
encoder (``set_image``) and the 1-point decoder call (``predict``) as ``run.py`` does, and skips
AMG. The baseline worker imports the baseline's ``sam_jax`` (``PYTHONPATH``), which the script
checks. Writes ``benchmarks/AB.md`` (or ``--results``) with every round's medians, the medians over
rounds and the ratio new / baseline (below 1 is faster).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import harness

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROWS = [
    ("image encoder (set_image)", "encoder", 1.0, "s"),
    ("decoder call, 1 point (predict)", "decoder_call", 1e3, "ms"),
]


def _worker(tree: Path, out: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(tree / "benchmarks" / "ours.py"), "--model", args.model, "--threads", str(args.threads)]
    cmd += [
        "--repeats",
        str(args.repeats),
        "--skip",
        "amg",
        "--out",
        str(out),
        "--arrays",
        str(out.with_suffix(".npz")),
    ]
    probe = subprocess.run(
        [sys.executable, "-c", "import sam_jax; print(sam_jax.__file__)"], env=env, capture_output=True, text=True
    )
    if not probe.stdout.strip().startswith(str(tree)):
        raise RuntimeError(f"the worker for {tree} would import sam_jax from {probe.stdout.strip()}")
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=tree)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare this tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--threads", type=int, default=harness.usable_cores())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sam_jax_ab"))
    parser.add_argument("--results", type=Path, default=HERE / "AB.md")
    args = parser.parse_args()

    base = args.workdir / "baseline"
    rev = subprocess.run(["git", "rev-parse", args.baseline], cwd=ROOT, check=True, capture_output=True, text=True)
    rev = rev.stdout.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    if base.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    args.workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(base), rev], cwd=ROOT, check=True)

    runs: dict[str, list[dict]] = {"baseline": [], "new": []}
    try:
        for r in range(args.rounds):
            for side, tree in (("baseline", base), ("new", ROOT)):
                runs[side].append(_worker(tree, args.workdir / f"{side}_{r}.json", args))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)

    new_label = head.stdout.strip()[:10] + (" + uncommitted changes" if dirty.stdout.strip() else "")
    lines = [
        "# Interleaved A/B: this tree against a baseline commit",
        "",
        f"`python benchmarks/ab.py --baseline {args.baseline} --rounds {args.rounds} --model {args.model} "
        f"--threads {args.threads}` on {datetime.date.today().isoformat()}: baseline `{rev[:10]}`, new `{new_label}`.",
        f"Workers alternate (baseline, new) x {args.rounds}; each value is one worker's median of "
        f"{args.repeats} timed calls (decoder: at least 10) after a warm-up.",
        "",
        f"Machine: {json.dumps(runs['new'][0]['machine'])}",
        "",
        "| measure | round | baseline | new |",
        "|---|---|---|---|",
    ]
    summary = []
    for label, key, scale, unit in ROWS:
        b = [w["timings"][key]["median"] * scale for w in runs["baseline"]]
        n = [w["timings"][key]["median"] * scale for w in runs["new"]]
        lines += [
            f"| {label} | {i + 1} | {x:.4g} {unit} | {y:.4g} {unit} |"
            for i, (x, y) in enumerate(zip(b, n, strict=True))
        ]
        mb, mn = statistics.median(b), statistics.median(n)
        summary.append(f"| {label} | {mb:.4g} {unit} | {mn:.4g} {unit} | {mn / mb:.3f} |")
    lines += ["", "| measure | baseline (median of rounds) | new | new / baseline |", "|---|---|---|---|", *summary]
    args.results.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
