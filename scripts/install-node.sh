#!/usr/bin/env bash
# Installs edge-agent on a Debian or Ubuntu node (x86_64 or aarch64) as a systemd service:
# a virtual environment in /opt/edge-agent/venv, the user edge-agent (in group dialout for
# serial ports), /etc/edge-agent with agent.toml (kept if present) and keys/, and the unit
# systemd/edge-agent.service, enabled. Running it again upgrades in place.
#
#   sudo scripts/install-node.sh               install or upgrade from this checkout
#   sudo scripts/install-node.sh --uninstall   stop and remove the service and the venv;
#                                              config, keys and state stay (remove by hand)
#   scripts/install-node.sh --root DIR         stage the files under DIR, as a package
#                                              build would: no apt, no user, no systemctl
#
# EDGE_AGENT_PIP_ARGS adds pip options, e.g. "--index-url http://mirror.local/simple".
set -euo pipefail

source_dir=$(cd "$(dirname "$0")/.." && pwd)
root=""
action=install
enable=yes

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) action=uninstall ;;
        --root)
            [ $# -ge 2 ] || { echo "install-node.sh: --root needs a directory" >&2; exit 2; }
            root=$(realpath -m "$2")
            shift
            ;;
        --no-enable) enable=no ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install-node.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

staged() { [ -n "$root" ]; }
say() { echo "install-node.sh: $*"; }

if ! staged && [ "$(id -u)" -ne 0 ]; then
    say "please run as root, e.g. sudo $0 $*" >&2
    say "(or --root DIR to stage the files under DIR without touching the system)" >&2
    exit 1
fi

check_platform() {
    local id="" id_like=""
    if [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091
        id=$(. /etc/os-release && echo "${ID:-}")
        # shellcheck disable=SC1091
        id_like=$(. /etc/os-release && echo "${ID_LIKE:-}")
    fi
    case " $id $id_like " in
        *" debian "* | *" ubuntu "*) ;;
        *) say "this installer supports Debian and Ubuntu; found '${id:-unknown}'" >&2; exit 1 ;;
    esac
    case "$(uname -m)" in
        x86_64 | aarch64) ;;
        *) say "supported machines are x86_64 and aarch64; found $(uname -m)" >&2; exit 1 ;;
    esac
}

opt="$root/opt/edge-agent"
etc="$root/etc/edge-agent"
unit_dir="$root/etc/systemd/system"
state="$root/var/lib/edge-agent"

install_agent() {
    check_platform
    if ! staged; then
        say "installing python3 and python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3 python3-venv >/dev/null
        if ! getent group edge-agent >/dev/null; then
            groupadd --system edge-agent
        fi
        if ! getent passwd edge-agent >/dev/null; then
            say "creating the system user edge-agent"
            useradd --system --gid edge-agent --groups dialout --home-dir /var/lib/edge-agent \
                --no-create-home --shell /usr/sbin/nologin edge-agent
        fi
    fi

    say "installing into $opt/venv"
    mkdir -p "$opt"
    if [ ! -x "$opt/venv/bin/python" ]; then
        python3 -m venv "$opt/venv"
    fi
    # shellcheck disable=SC2086 # word splitting of the extra pip options is intended
    "$opt/venv/bin/pip" install --quiet ${EDGE_AGENT_PIP_ARGS:-} "$source_dir"

    install -d -m 0750 "$etc" "$etc/keys" "$state"
    if [ -e "$etc/agent.toml" ]; then
        say "keeping the existing $etc/agent.toml"
    else
        install -m 0640 "$source_dir/config/agent.toml" "$etc/agent.toml"
    fi
    install -d "$unit_dir"
    install -m 0644 "$source_dir/systemd/edge-agent.service" "$unit_dir/edge-agent.service"

    if staged; then
        say "staged under $root"
        return
    fi
    chown -R root:edge-agent "$etc"
    chown edge-agent:edge-agent "$state"
    systemctl daemon-reload
    if [ "$enable" = yes ]; then
        systemctl enable edge-agent.service
        systemctl restart edge-agent.service
        say "edge-agent is running; check it with: $opt/venv/bin/edge-agent status"
    fi
}

uninstall_agent() {
    if ! staged && systemctl list-unit-files edge-agent.service >/dev/null 2>&1; then
        systemctl disable --now edge-agent.service || true
    fi
    rm -f "$unit_dir/edge-agent.service"
    rm -rf "$opt"
    if ! staged; then
        systemctl daemon-reload
    fi
    say "removed the service and $opt; kept $etc and $state (config, keys, outbox)"
}

case "$action" in
    install) install_agent ;;
    uninstall) uninstall_agent ;;
esac
