#!/usr/bin/env bash
# The GPU benchmarks (driver.py) on a bare GPU machine whose python3 has torch, in one command:
#
#   bash benchmarks/gpu/run_gpu.sh                  # there; $OUT gets the results
#   bash benchmarks/gpu/run_gpu.sh --dry-run-cpu    # here: the same with tiny shapes on CPU
#   bash benchmarks/gpu/run_gpu.sh --only training_b8 generation   # a rerun of some steps
#
# 1. Installs the wheels of benchmarks/gpu/wheels/ (build_wheelhouse.sh; carried to the machine)
#    whose package the machine's Python lacks, into a folder put first on PYTHONPATH, and the
#    import-only stand-ins of import_stubs/ for modules still missing (PyAV, spaCy). Not a venv:
#    the machine's python3 is itself a venv (/opt/torch/.venv), and `venv --system-site-packages`
#    would see the base interpreter's packages, not its torch.
# 2. Runs driver.py (its docstring lists the steps); everything printed goes to $OUT/gpu_run.log,
#    the measurements to $OUT/gpu_results.json.
#
# Environment: PYTHON (default python3: the one with torch), OUT (default benchmarks/out/gpu),
# GPU_SITE (default /tmp/audiocraft_ext_gpu_site: where the wheels are installed; emptied first).
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/benchmarks/gpu
python=${PYTHON:-python3}
out=${OUT:-$repo/benchmarks/out/gpu}
site=${GPU_SITE:-/tmp/audiocraft_ext_gpu_site}
mkdir -p "$out"

importable() {  # importable MODULE: with the site folder on the path
    PYTHONPATH="$site" "$python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)' "$1"
}

install_missing() {
    rm -rf "$site" && mkdir -p "$site" || return 1
    local missing=() wheel name
    if compgen -G "$here/wheels/*.whl" >/dev/null; then
        for wheel in "$here"/wheels/*.whl; do
            name=$(basename "$wheel" | cut -d- -f1)
            if "$python" -c 'import importlib.metadata as m, sys; print("present:", sys.argv[1], m.version(sys.argv[1]))' "$name" 2>/dev/null; then
                continue
            fi
            missing+=("$wheel")
        done
    else
        echo "no wheelhouse at $here/wheels (build_wheelhouse.sh): installing nothing"
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${#missing[@]} wheels into $site: $(for w in "${missing[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
        timeout 180 "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
            --disable-pip-version-check --target "$site" "${missing[@]}" || return 1
    fi
    for stub in "$here"/import_stubs/*/; do
        name=$(basename "$stub")
        if ! importable "$name"; then
            cp -r "$stub" "$site/" && cp "$here/import_stubs/_stand_in.py" "$site/" || return 1
            echo "import-only stand-in: $name"
        fi
    done
}

main() {
    echo "=== $(date -u +%FT%TZ) run_gpu.sh $* on $(uname -n), python: $python"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
    local start=$SECONDS
    if ! install_missing; then
        echo "=== install: FAILED; running the steps anyway, they will say what is missing"
    fi
    echo "=== install: $((SECONDS - start)) s"
    export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
    "$python" "$here/driver.py" --out "$out" "$@"
}

main "$@" 2>&1 | tee "$out/gpu_run.log"
