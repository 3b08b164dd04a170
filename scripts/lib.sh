# Shared by scripts/serve and scripts/test (sourced, not run).

# Installs Debian packages with apt-get (through `sudo -n` unless root); `apt-get update` runs at
# most once per run.
apt_updated=
apt_install() {
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "$0: run as root or install $* (apt-get install $*)" >&2
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null; then
        echo "$0: no apt-get here; install the equivalent of Debian's $* and retry" >&2
        return 1
    fi
    if [ -z "$apt_updated" ]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
        apt_updated=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null >/dev/null
}
