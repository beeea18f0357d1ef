"""Runs every CPU benchmark (quick sizes; MoBA at its T = 32k size) and assembles docs/benchmarks.md from their tables.

    python -m bench.run_all            # (= `make bench`) ≈ 13 min on 2 CPU cores
    python -m bench.run_all --collect  # only re-assemble docs/benchmarks.md from the fragments

Each benchmark writes its own fragment docs/benchmarks_<name>.md (machine and versions named
inside); this page concatenates them in a fixed order. GPU numbers come from bench/gpu.sh.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BENCHES = [  # (module, arguments, fragment)
    ("bench.bench_lsa", ["--quick"], "benchmarks_lsa.md"),
    ("bench.bench_linear_attention", ["--quick"], "benchmarks_kernels_linear.md"),
    # the T = 32k comparison (≈ 3 min): its quick size (T = 4096) would replace that table
    ("bench.bench_moba", ["--out", str(DOCS / "benchmarks_kernels_sparse.md")], "benchmarks_kernels_sparse.md"),
    ("bench.bench_gpt", ["--quick"], "benchmarks_gpt.md"),
    ("bench.bench_pfn", ["--quick"], "benchmarks_pfn.md"),
]
# written by other commands, collected when present: `make bench-peer` (ictl vs the PyTorch original)
OTHER_FRAGMENTS = ["benchmarks_peer.md"]
HEADER = """# Benchmarks

Every number below was produced by the benchmark named in its section, on the machine named in
that section, with ratios measured side by side in the same run. Re-create with `make bench`
(CPU) or `bash bench/gpu.sh` (accelerator). Timings on a shared 2-core machine are noisy: the
sections say when other work was running.

"""


def collect() -> pathlib.Path:
    parts = [HEADER]
    for frag in [f for _, _, f in BENCHES] + OTHER_FRAGMENTS:
        path = DOCS / frag
        if path.exists():
            parts.append(path.read_text().rstrip() + "\n\n")
    gpu = DOCS / "benchmarks_gpu.md"
    parts.append(gpu.read_text() if gpu.exists() else
                 "## GPU\n\nNot yet measured: no accelerator was lent to the sessions so far; "
                 "`bench/gpu.sh` is the prepared command.\n")
    out = DOCS / "benchmarks.md"
    out.write_text("".join(parts))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--collect", action="store_true")
    args = ap.parse_args(argv)
    if not args.collect:
        for module, extra, _ in BENCHES:
            print(f"== {module} {' '.join(extra)}", flush=True)
            subprocess.run([sys.executable, "-m", module, *extra], check=True, cwd=ROOT)
    print(f"wrote {collect()}")


if __name__ == "__main__":
    main()
