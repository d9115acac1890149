#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv/.
#
#   bash scripts/setup.sh          # runtime: torch, requirements.txt, otviz (editable)
#   bash scripts/setup.sh --dev    # also requirements-dev.txt (tests, notebooks, browser tests)
#
# Idempotent: a stamp file in .venv records a hash of the requirement files and of
# the torch spec; when it matches, nothing is reinstalled.
#
# Environment:
#   OTVIZ_TORCH   how to install torch, as arguments to `pip install`
#                 (default: torch==2.13.0). Torch is installed FIRST so that
#                 requirements.txt's `torch>=...` is already satisfied and pip does
#                 not pick a large build of its own choosing. Examples:
#                   OTVIZ_TORCH="torch==2.5.1" bash scripts/setup.sh
#                 For a CUDA or CPU-only build from an extra index, configure the
#                 index through pip's own variables (PIP_INDEX_URL /
#                 PIP_EXTRA_INDEX_URL) or pip.conf, and set OTVIZ_TORCH to the version.
#   OTVIZ_PYTHON  interpreter used to create .venv (default: python3.11 if present,
#                 else python3; needs Python >= 3.10).
#   OTVIZ_FORCE=1 reinstall even when the stamp matches.
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

DEV=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup.sh: unknown option '$arg' (valid: --dev, --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
TORCH_SPEC="${OTVIZ_TORCH:-torch==2.13.0}"

say() { echo "[setup] $*"; }

# pip stays quiet (-qq: no warnings, no progress) but still prints errors; no version nag, no prompts.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
pip_install() { "$PY" -m pip install -qq "$@"; }

# --- 1. the virtual environment -------------------------------------------------
if [[ -n "${OTVIZ_PYTHON:-}" ]]; then
    BASE_PY="$OTVIZ_PYTHON"
elif command -v python3.11 >/dev/null 2>&1 && python3.11 -c '' >/dev/null 2>&1; then
    BASE_PY=python3.11
else
    BASE_PY=python3
fi

if [[ -x "$PY" ]] && "$PY" -c 'import sys, pip' >/dev/null 2>&1; then
    :
else
    if ! "$BASE_PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
        echo "setup.sh: otviz needs Python >= 3.10; '$BASE_PY' is $("$BASE_PY" --version 2>&1 || echo missing)." >&2
        echo "          Install Python 3.11 or set OTVIZ_PYTHON=/path/to/python3.11." >&2
        exit 1
    fi
    say "creating .venv with $("$BASE_PY" --version 2>&1)"
    rm -rf "$VENV"
    "$BASE_PY" -m venv "$VENV"
fi

# --- 2. skip when nothing changed -----------------------------------------------
BASE_HASH="$(printf '%s\n' "$TORCH_SPEC" | cat - requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
DEV_HASH="$(printf '%s\n' "$BASE_HASH" | cat - requirements-dev.txt | sha256sum | cut -d' ' -f1)"
BASE_STAMP="$VENV/.otviz-setup-base"
DEV_STAMP="$VENV/.otviz-setup-dev"
if [[ "$DEV" == 1 ]]; then WANT="$DEV_HASH"; STAMP="$DEV_STAMP"; else WANT="$BASE_HASH"; STAMP="$BASE_STAMP"; fi

if [[ "${OTVIZ_FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
        && "$PY" -c 'import otviz, torch' >/dev/null 2>&1; then
    say ".venv is up to date (delete $(basename "$STAMP") in .venv or set OTVIZ_FORCE=1 to reinstall)"
    exit 0
fi

# --- 3. install -----------------------------------------------------------------
say "upgrading pip"
pip_install --upgrade pip || say "warning: could not upgrade pip; going on with $("$PY" -m pip --version)"

say "installing torch first: $TORCH_SPEC"
# shellcheck disable=SC2086  # OTVIZ_TORCH may hold several pip arguments
pip_install $TORCH_SPEC

if [[ "$DEV" == 1 ]]; then
    say "installing requirements.txt and requirements-dev.txt"
    pip_install -r requirements.txt -r requirements-dev.txt
else
    say "installing requirements.txt"
    pip_install -r requirements.txt
fi

say "installing otviz (editable)"
"$PY" -m pip install -qq -e . --no-deps

"$PY" -c 'import otviz, torch; print("[setup] otviz", otviz.__version__, "with torch", torch.__version__, "(CUDA available)" if torch.cuda.is_available() else "(CPU)")'

echo "$BASE_HASH" > "$BASE_STAMP"
if [[ "$DEV" == 1 ]]; then echo "$DEV_HASH" > "$DEV_STAMP"; fi
say "done: .venv is ready ($VENV/bin/otviz, $VENV/bin/python)"
