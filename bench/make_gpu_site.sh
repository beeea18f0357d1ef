#!/usr/bin/env bash
# Copies the pure-Python packages an accelerator machine may lack (it has jax 0.11 + CUDA but not
# necessarily jaxtyping or pytest) from .venv into ./.gpu_site, which bench/gpu.sh puts first on
# PYTHONPATH. Carry `.gpu_site` with the run (it is git-ignored). From the repo root:
#   bash bench/make_gpu_site.sh && du -sh .gpu_site
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf .gpu_site && mkdir -p .gpu_site
for pkg in jaxtyping wadler_lindig pytest _pytest pluggy iniconfig py.py ml_collections absl; do
  if [ -e "$SITE/$pkg" ]; then cp -r "$SITE/$pkg" .gpu_site/; else echo "not in .venv: $pkg (skipped)"; fi
done
find .gpu_site -name __pycache__ -prune -exec rm -rf {} +
echo "wrote .gpu_site: $(ls .gpu_site | tr '\n' ' ')"
