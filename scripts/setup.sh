#!/usr/bin/env bash
# Install what audiocraft-ext needs and nothing else. Safe to run again: when everything is
# already there it only checks, in about a second.
#
#   1. Debian's `ffmpeg` package: the `ffmpeg` binary (AudioCraft's `audio_write` pipes into it)
#      and the FFmpeg shared libraries that `torchcodec` (behind `torchaudio.save/load`) loads;
#      Debian's `fluidsynth` and `fluid-soundfont-gm`: the demo's music is MIDI scores rendered by
#      the `fluidsynth` command with the FluidR3 General MIDI SoundFont.
#   2. uv, pinned (pip install --user), when the `uv` found is not that version.
#   3. The locked environment (`uv sync --frozen --extra test`) in a venv outside the repository,
#      ${AUDIOCRAFT_EXT_VENV:-$HOME/.cache/audiocraft-ext/venv}, so every checkout finds it warm.
#      With --extras "NAME ...", also those optional extras of pyproject.toml (tensorboard, wandb,
#      metrics); the names are kept in the venv, so every later run (every `make`) syncs them too.
#   4. Once per (FFmpeg version, uv.lock): a check that torchcodec really loads FFmpeg.
#   5. Only with --browser (`make test`): Debian's `chromium`, for the test that opens the HTML
#      report in a headless browser. Failing to install it is not fatal: that test then skips
#      and says why (it fails where CI is set). `make demo` never installs it.
#
# Usage: scripts/setup.sh [--browser] [--extras "NAME ..."]   (`make setup EXTRAS="..."`)
# Environment: AUDIOCRAFT_EXT_VENV (venv path). Prints `[setup] ...` lines.
set -euo pipefail

BROWSER=0
NEW_EXTRAS=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --browser) BROWSER=1 ;;
        --extras) [ "$#" -ge 2 ] || { printf '[setup] ERROR: --extras needs a value, e.g. --extras "tensorboard wandb"\n' >&2; exit 2; }
                  NEW_EXTRAS="$2"; shift ;;
        *) printf '[setup] ERROR: unknown argument %s (usage: scripts/setup.sh [--browser] [--extras "NAME ..."])\n' "$1" >&2; exit 2 ;;
    esac
    shift
done

UV_VERSION=0.13.9
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AUDIOCRAFT_EXT_VENV:-$HOME/.cache/audiocraft-ext/venv}"
export UV_PROJECT_ENVIRONMENT="$VENV"
STAMP="$VENV/.audiocraft-ext-setup-ok"
EXTRAS_FILE="$VENV/.audiocraft-ext-extras"  # the optional extras asked for once, synced every time

# uv uses its own CA roots unless told otherwise; on machines whose traffic goes through a proxy
# with a private CA, that CA is only in the system bundle. Point uv at the system bundle.
if [ -z "${SSL_CERT_FILE:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

apt_install() {  # apt_install PKG...: `apt-get update` then install, only ever called when needed.
    command -v apt-get >/dev/null || die "missing $*, and no apt-get here: install them by hand."
    if [ "${#SUDO[@]}" -gt 0 ] && ! command -v sudo >/dev/null; then
        die "missing $*: run as root or install sudo."
    fi
    log "installing Debian packages: $* (apt-get update first)"
    # Another apt run (e.g. unattended-upgrades) may hold the lock: wait for it instead of failing.
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null
}

deb_installed() {  # deb_installed PKG: true when dpkg says PKG is installed.
    command -v dpkg-query >/dev/null &&
        [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# --- 1. System packages --------------------------------------------------------------------
missing=()
SOUNDFONT=/usr/share/sounds/sf2/FluidR3_GM.sf2
if command -v dpkg-query >/dev/null; then
    deb_installed ffmpeg || missing+=(ffmpeg)
    deb_installed fluidsynth || missing+=(fluidsynth)
    deb_installed fluid-soundfont-gm || missing+=(fluid-soundfont-gm)
else
    command -v ffmpeg >/dev/null || missing+=(ffmpeg)
    command -v fluidsynth >/dev/null || missing+=(fluidsynth)
    [ -f "$SOUNDFONT" ] || [ -n "${AUDIOCRAFT_EXT_SOUNDFONT:-}" ] || missing+=(fluid-soundfont-gm)
fi
# uv needs a Python 3.11 interpreter (requires-python ==3.11.*) and pip to install uv itself.
# Debian bookworm's python3 is 3.11.
python3 -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null ||
    command -v python3.11 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi
command -v ffmpeg >/dev/null || die "ffmpeg is still missing after install."
log "ffmpeg: $(ffmpeg -version | head -n1 | cut -d' ' -f1-3)"
command -v fluidsynth >/dev/null || die "fluidsynth is still missing after install."
[ -f "$SOUNDFONT" ] || [ -f "${AUDIOCRAFT_EXT_SOUNDFONT:-}" ] ||
    die "no SoundFont at $SOUNDFONT after installing fluid-soundfont-gm (or set AUDIOCRAFT_EXT_SOUNDFONT to a .sf2 file)."
log "fluidsynth: $(fluidsynth --version 2>/dev/null | head -n1 | awk '{print $NF}'), SoundFont ${AUDIOCRAFT_EXT_SOUNDFONT:-$SOUNDFONT}"

# --- 2. uv ----------------------------------------------------------------------------------
uv_version() { "$1" --version 2>/dev/null | awk '{print $2}'; }
UV=""
for candidate in "$(command -v uv || true)" \
        "$(python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ "$(uv_version "$candidate")" = "$UV_VERSION" ]; then
        UV="$candidate"
        break
    fi
done
if [ -z "$UV" ]; then
    log "installing uv==$UV_VERSION with pip"
    if python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
        pip_args=()  # inside a virtualenv, where --user is refused
    else
        pip_args=(--user)
    fi
    # Debian's own python3 refuses pip installs (PEP 668) unless told otherwise; uv is a
    # self-contained binary in the user site, so that is harmless.
    export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
    python3 -m pip install -q "${pip_args[@]}" "uv==$UV_VERSION" 2>/dev/null ||
        python3 -m pip install -q "${pip_args[@]}" --break-system-packages "uv==$UV_VERSION"
    UV="$(python3 -c 'import uv; print(uv.find_uv_bin())')"
    [ "$(uv_version "$UV")" = "$UV_VERSION" ] || die "could not install uv $UV_VERSION (got $UV)."
fi
log "uv: $UV ($UV_VERSION)"

# --- 3. Python environment ------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV (first time: ~8 GB of wheels, about a minute from a warm uv cache)"
fi
extras="$(cat "$EXTRAS_FILE" 2>/dev/null || true) ${NEW_EXTRAS//,/ }"
extras="$(printf '%s\n' $extras | sort -u | tr '\n' ' ')"
extra_args=(--extra test)
for name in $extras; do
    extra_args+=(--extra "$name")
done
start=$SECONDS
(cd "$REPO" && "$UV" sync --frozen "${extra_args[@]}") ||
    die "uv sync failed (extras: test ${extras:-none}; an unknown extra name? pyproject.toml lists them)."
[ -z "${extras// /}" ] || printf '%s\n' $extras > "$EXTRAS_FILE"
log "venv: $VENV ($((SECONDS - start)) s; extras: test ${extras})"

# --- 4. torchcodec <-> FFmpeg, once per FFmpeg version and lock file ---------------------------
ffmpeg_id="$(ffmpeg -version | head -n1)"
lock_id="$(sha256sum "$REPO/uv.lock" | cut -d' ' -f1)"
key="$ffmpeg_id $lock_id"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$key" ]; then
    log "checking that torchcodec loads the FFmpeg libraries"
    "$VENV/bin/python" - <<'EOF' || die "torchcodec cannot load FFmpeg (it supports FFmpeg 4 to 7 on Linux)."
from torchcodec._core import ops
versions = ops.get_ffmpeg_library_versions()
print(f"[setup] torchcodec uses FFmpeg {versions['ffmpeg_version']}")
EOF
    printf '%s' "$key" > "$STAMP"
fi
# --- 5. Headless browser for the HTML report test (only with --browser) ---------------------
if [ "$BROWSER" -eq 1 ]; then
    if ! command -v chromium >/dev/null; then
        # In a subshell: `die` there ends only the subshell, and the tests run without a browser.
        ( apt_install chromium ) ||
            log "WARNING: could not install Debian's chromium: the browser test of the HTML report will skip."
    fi
    if command -v chromium >/dev/null; then
        log "browser: $(chromium --version 2>/dev/null | head -n1)"
    fi
fi
log "ready. In a new shell, put the environment on PATH first: source $VENV/bin/activate"
