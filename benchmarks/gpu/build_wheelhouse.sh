#!/usr/bin/env bash
# Build benchmarks/gpu/wheels/: the wheels run_gpu.sh installs on the GPU machine, where nothing can
# be downloaded (Python 3.12, x86-64 Linux, torch 2.11 preinstalled; /work/.library/device/).
#
#   PYTHON=python3.12 bash benchmarks/gpu/build_wheelhouse.sh [DEST]
#
# Needs network access to PyPI and a Python with pip (any version: binary wheels are fetched for
# CPython 3.12 whatever runs pip; sdist-only packages are pure Python and built into py3 wheels).
# The folder is git-ignored and travels to the machine as a `carry` path; it is written beside
# DEST and renamed into place, and its size is printed (what travels must stay under 64 MiB).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$here/wheels}
python=${PYTHON:-python3}
requirements=$here/requirements.txt
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
           --platform manylinux_2_5_x86_64)

"$python" -m pip --version >/dev/null || { echo "error: $python has no pip; set PYTHON=a Python with pip" >&2; exit 1; }
tmp=$(mktemp -d "$dest.partial.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

grep -v '^\s*#' "$requirements" | sed 's/#.*//; s/\s*$//' | grep -v '^$' | while read -r requirement; do
    if "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp "${platforms[@]}" -d "$tmp" "$requirement" 2>/dev/null; then
        echo "wheel   $requirement"
    else  # no wheel on PyPI for CPython 3.12 on Linux: build one from the sdist
        "$python" -m pip wheel --quiet --no-deps --no-binary=:all: -w "$tmp" "$requirement"
        echo "built   $requirement"
    fi
done

count=$(ls "$tmp"/*.whl | wc -l)
expected=$(grep -v '^\s*#' "$requirements" | sed 's/#.*//' | grep -c '==')
if [ "$count" -ne "$expected" ]; then
    echo "error: $count wheels for $expected requirements in $requirements" >&2
    exit 1
fi
rm -rf "$dest.old"
if [ -e "$dest" ]; then mv "$dest" "$dest.old"; fi
mv "$tmp" "$dest"
rm -rf "$dest.old"
trap - EXIT
echo "$count wheels in $dest: $(du -sb "$dest" | cut -f1) bytes ($(du -sh "$dest" | cut -f1))"
