# Sourced by scripts/demo, scripts/test and .ci/run: the project virtualenv (.venv at the repo
# root) and the Debian packages it takes, installed only when missing and announced first.
# The system interpreter is never installed into (Debian marks it externally managed, PEP 668).

PYTHON=${PYTHON:-python3}
VENV_DIR=.venv
VENV_PYTHON=$VENV_DIR/bin/python
# Root is the norm on CI and test machines: pip's warning about it is noise there.
export PIP_ROOT_USER_ACTION=ignore

# deb_install WHO WHY PACKAGE...: apt-get install, saying first what and why.
deb_install() {
    local who=$1 why=$2
    shift 2
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$who: $why: install $* with your package manager, then run me again" >&2
        exit 1
    fi
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "$who: installing Debian packages $* (${sudo:+sudo }apt-get update, apt-get install): $why" >&2
    # One update per invocation: a fresh machine has no package lists at all.
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

# ensure_venv WHO EXTRAS: .venv exists and holds gw (editable) with EXTRAS ("" or "[test]").
# pip runs again only when pyproject.toml is newer than the last install with those extras.
ensure_venv() {
    local who=$1 extras=$2
    if [[ ! -x $VENV_PYTHON ]]; then
        # Debian splits ensurepip, which `python3 -m venv` needs, into python3-venv.
        if ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
            deb_install "$who" "$PYTHON -m venv needs ensurepip, which Debian ships in python3-venv" python3-venv
        fi
        echo "$who: creating the project virtualenv $VENV_DIR ($PYTHON -m venv)" >&2
        rm -rf "$VENV_DIR"
        "$PYTHON" -m venv "$VENV_DIR"
    fi
    local stamp="$VENV_DIR/.gw-installed${extras:+-${extras//[^a-z]/}}"
    if [[ ! -e $stamp || pyproject.toml -nt $stamp ]]; then
        echo "$who: installing gw$extras into $VENV_DIR (pip install -e '.$extras')" >&2
        "$VENV_PYTHON" -m pip install -q --upgrade pip
        "$VENV_PYTHON" -m pip install -q -e ".$extras"
        touch "$stamp"
    fi
}
