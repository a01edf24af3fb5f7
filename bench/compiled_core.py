"""Would compiling the pure core make a worker fast enough? One core, no Kafka, A/B in one run.

    python -m bench.compiled_core [--posts 200000] [--pairs 3] [--work DIR]

Copies the working tree's packages three times, compiles two of the copies unchanged (no source
edits, no type declarations added) and runs `bench.profile_core` in each, alternating variant by
variant, `--pairs` times:

- interpreted: the code as it runs today;
- cython: Cython compiles the core modules and schemas/post.py as they are (pure-Python mode,
  annotations not used as C types, since `int` there is a Python int that may be big);
- mypyc: mypyc compiles the typed core modules as they are (it turns annotated classes such as
  Reach and Baseline into native classes with C attribute slots, and checks annotations at run time).

Cython and mypy come from PyPI into a scratch virtualenv under --work; nothing is installed into
the project's environment and no compiled file is left in the repository (a stale `.so` next to its
`.py` would silently shadow later edits, one reason the project does not ship a compiled core).
Writes bench/results/<timestamp>-compiled-core.json and prints the medians and their ratios to the
interpreted core. Every variant must produce the same window rows, or the run fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("tagpulse", "schemas", "streams", "sinks", "producers", "bench")
TOOLS = ("cython==3.3.1", "mypy==2.4.1", "setuptools")
# mypy reads the types of these to compile the modules that import them: the versions the core runs with
TYPED_DEPENDENCIES = ("numpy", "orjson", "msgspec")
CYTHON_MODULES = ("tagpulse/core/windows.py", "tagpulse/core/stage1.py", "tagpulse/core/stage2.py",
                  "tagpulse/core/spikes.py", "tagpulse/core/merge_spikes.py", "tagpulse/core/dedup.py",
                  "schemas/post.py")
# The typed core: mypyc refuses a module mypy finds a type error in.
MYPYC_MODULES = ("tagpulse/core/windows.py", "tagpulse/core/stage1.py", "tagpulse/core/stage2.py",
                 "tagpulse/core/spikes.py", "tagpulse/core/merge_spikes.py", "tagpulse/core/dedup.py")
TIMES = ("seconds", "stage1_s", "stage2_s", "outputs_s", "delta_s")

_CYTHON_SETUP = """\
import sys
from Cython.Build import cythonize
from setuptools import Extension, setup

modules = sys.argv[1:]
sys.argv = [sys.argv[0], "build_ext", "--inplace"]
setup(ext_modules=cythonize([Extension(m[:-3].replace("/", "."), [m]) for m in modules],
                            compiler_directives={"language_level": 3, "annotation_typing": False},
                            nthreads=2, quiet=True))
"""


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def copy_tree(dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    for name in PACKAGES:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "results"))
    return dest


def tools_venv(work: Path) -> Path:
    venv = work / "tools-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        base = getattr(sys, "_base_executable", sys.executable)  # the same interpreter, so the same ABI
        run([base, "-m", "venv", str(venv)], work)
    pinned = [f"{name}=={metadata.version(name)}" for name in TYPED_DEPENDENCIES]
    run([str(python), "-m", "pip", "install", "-q", *TOOLS, *pinned], work)
    return venv


def build(work: Path) -> dict[str, Path]:
    venv = tools_venv(work)
    variants = {"interpreted": copy_tree(work / "interpreted")}
    cy = variants["cython"] = copy_tree(work / "cython")
    (cy / "cython_setup.py").write_text(_CYTHON_SETUP)
    run([str(venv / "bin" / "python"), "cython_setup.py", *CYTHON_MODULES], cy)
    my = variants["mypyc"] = copy_tree(work / "mypyc")
    # --follow-imports=silent: modules not compiled are imported as they are, not checked
    run([str(venv / "bin" / "mypyc"), "--follow-imports=silent", *MYPYC_MODULES], my)
    for name, path in variants.items():
        built = [p for p in path.rglob("*.so") if "build" not in p.relative_to(path).parts]
        print(f"{name}: {len(built)} compiled modules", file=sys.stderr)
    return variants


def profile(path: Path, posts: int) -> dict:
    # The copy goes first on the path, ahead of the editable install of the repository itself.
    env = {**os.environ, "PYTHONPATH": str(path)}
    out = run([sys.executable, "-m", "bench.profile_core", "--posts", str(posts)], path, env)
    result = json.loads(out[out.index("{"):])
    module = run([sys.executable, "-c", "import tagpulse.core.windows as m; print(m.__file__)"], path, env)
    result["windows_module"] = str(Path(module.strip()).relative_to(path))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--pairs", type=int, default=3, help="rounds of one run per variant, alternating")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tagpulse-compiled-core")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    variants = build(args.work)
    runs = []
    for pair in range(1, args.pairs + 1):
        for name, path in variants.items():
            result = profile(path, args.posts)
            runs.append({"variant": name, "pair": pair, **result})
            print(f"pair {pair} {name:12} " + "  ".join(f"{k} {result[k]:.2f}" for k in TIMES)
                  + f"  rows {result['rows']:,}  ({result['windows_module']})", file=sys.stderr)
    if len({r["rows"] for r in runs}) != 1 or len({r["spike_keys"] for r in runs}) != 1:
        raise SystemExit("the variants disagree on the rows or the detector's keys: not comparable")
    medians = {name: {k: statistics.median(r[k] for r in runs if r["variant"] == name) for k in TIMES}
               for name in variants}
    ratios = {name: {k: round(m[k] / medians["interpreted"][k], 3) for k in TIMES} for name, m in medians.items()}
    summary = {"posts": args.posts, "pairs": args.pairs, "python": sys.version.split()[0], "tools": TOOLS,
               "cython_modules": CYTHON_MODULES, "mypyc_modules": MYPYC_MODULES, "median_s": medians,
               "ratio_to_interpreted": ratios, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y%m%dT%H%M%S')}-compiled-core.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    for name in variants:
        print(f"{name:12} " + "  ".join(f"{k} {medians[name][k]:.2f} s (x{ratios[name][k]:.2f})" for k in TIMES))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
