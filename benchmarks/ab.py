"""sam_jax at two commits, interleaved in one run: is a change free of speed regressions?

    python benchmarks/ab.py --baseline REV [--new REV] [--rounds 3] [--model vit_b] [--threads N]

Checks ``REV`` out into ``--workdir``/baseline (``git worktree``; ``--new REV`` likewise, else this
working tree is the new side), then alternates the ``ours.py`` worker of the two trees,
``--rounds`` times each (A B A B ...), so that both see the same machine minute by minute. Each
worker loads the fixture weights, times the image encoder (``set_image``) and the 1-point decoder
call (``predict``) as ``run.py`` does, and skips AMG. A worker imports its own tree's ``sam_jax``
(``PYTHONPATH``), which the script checks. Writes ``benchmarks/AB.md`` (or ``--results``) with
every round's medians, the medians over rounds and the ratio new / baseline (below 1 is faster).
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


# Runs a script with the tree on PYTHONPATH winning over an editable install of sam_jax (whose
# import finder would otherwise answer first).
# The converter folder installs as sam_jax.convert (pyproject's package-dir), which a source tree on
# PYTHONPATH does not provide by itself: the tree's root joins the package's path for it.
_BOOT = (
    "import os, runpy, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]; "
    "import sam_jax; sam_jax.__path__.append(os.environ['PYTHONPATH']); "
    "script = sys.argv[1]; sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(script)); "
    "runpy.run_path(script, run_name='__main__')"
)


def _worker(tree: Path, out: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    script = str(tree / "benchmarks" / "ours.py")
    cmd = [sys.executable, "-c", _BOOT, script, "--model", args.model, "--threads", str(args.threads)]
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
    probe_script = out.with_suffix(".probe.py")
    probe_script.write_text("import sam_jax\nprint(sam_jax.__file__)\n")
    probe = subprocess.run(
        [sys.executable, "-c", _BOOT, str(probe_script)], env=env, cwd=tree, capture_output=True, text=True
    )
    if not probe.stdout.strip().startswith(str(tree)):
        raise RuntimeError(f"the worker for {tree} would import sam_jax from {probe.stdout.strip()}")
    print("$", script, " ".join(cmd[4:]), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=tree)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with")
    parser.add_argument("--new", help="git revision of the new side (default: this working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--threads", type=int, default=harness.usable_cores())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sam_jax_ab"))
    parser.add_argument("--results", type=Path, default=HERE / "AB.md")
    args = parser.parse_args()

    def rev_parse(name: str) -> str:
        out = subprocess.run(["git", "rev-parse", name], cwd=ROOT, check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def checkout(name: str, rev: str) -> Path:
        tree = args.workdir / name
        if tree.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True)
        return tree

    args.workdir.mkdir(parents=True, exist_ok=True)
    rev = rev_parse(args.baseline)
    trees = {"baseline": checkout("baseline", rev)}
    if args.new:
        new_label = rev_parse(args.new)[:10]
        trees["new"] = checkout("new", rev_parse(args.new))
    else:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
        new_label = rev_parse("HEAD")[:10] + (" + uncommitted changes" if dirty.stdout.strip() else "")
        trees["new"] = ROOT

    runs: dict[str, list[dict]] = {"baseline": [], "new": []}
    try:
        for r in range(args.rounds):
            for side in ("baseline", "new"):
                runs[side].append(_worker(trees[side], args.workdir / f"{side}_{r}.json", args))
    finally:
        for tree in trees.values():
            if tree != ROOT:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)

    lines = [
        "# Interleaved A/B: this tree against a baseline commit",
        "",
        f"`python benchmarks/ab.py --baseline {args.baseline}{' --new ' + args.new if args.new else ''} "
        f"--rounds {args.rounds} --model {args.model} "
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
