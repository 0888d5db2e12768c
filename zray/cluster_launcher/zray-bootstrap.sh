#!/bin/sh
# zray-bootstrap.sh: the per-host steps of `zray up` / `zray down`, as a plain
# shell script an operator can also run by hand (Ansible, cloud-init, ...).
# See scripts/README.md. Settings come from the environment:
#   ZRAY_PYTHON      the interpreter zray runs with      (default: python3)
#   ZRAY_VENV        a venv to create when zray does not import there (optional)
#   ZRAY_PIP_INSTALL what `pip install` installs into it  (default: zray)
#   ZRAY_TEMP_DIR    zray's temp dir on this host         (default: /tmp/zray-$(id -u))
#   ZRAY_CLUSTER_KEY_FILE  where the cluster key lives (default: $ZRAY_TEMP_DIR/cluster.key)
# Commands:
#   install                   make `$ZRAY_PYTHON -c 'import zray'` work (a no-op when it does)
#   write-key                 store the key read from stdin in $ZRAY_CLUSTER_KEY_FILE (0600)
#   read-key                  print the stored key (exit 3 when there is none)
#   new-key                   create a fresh key in $ZRAY_CLUSTER_KEY_FILE unless one exists
#   start-head  [ARGS...]     zray start --head, detached under nohup, with the stored key
#   start-worker HEAD:PORT [ARGS...]   zray start --address=HEAD:PORT, likewise
#   install-unit NAME         install the systemd unit read from stdin, enable --now
#   nodes HEAD:PORT           the cluster's nodes as JSON (run on the head)
#   stop                      stop zray here and remove the units zray up installed
set -eu

PYTHON=${ZRAY_PYTHON:-python3}
TEMP_DIR=${ZRAY_TEMP_DIR:-/tmp/zray-$(id -u)}
KEY_FILE=${ZRAY_CLUSTER_KEY_FILE:-$TEMP_DIR/cluster.key}
UNIT_DIR=${ZRAY_UNIT_DIR:-/etc/systemd/system}
LOG=$TEMP_DIR/zray-bootstrap.log
export ZRAY_TEMP_DIR="$TEMP_DIR"
case $PYTHON in
    /*) PATH=$(dirname "$PYTHON"):$PATH; export PATH ;;
esac
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi

die() { echo "zray-bootstrap: $*" >&2; exit 1; }

private_dir() { (umask 077 && mkdir -p "$1"); }

zray_cli() { "$PYTHON" -m zray._private.cli "$@"; }

# zray start, detached: its daemons leave the SSH session; all output to $LOG
start_detached() {
    private_dir "$TEMP_DIR"
    [ -f "$KEY_FILE" ] || die "no cluster key at $KEY_FILE; run write-key or new-key first"
    # daemons left from an earlier start (not part of the cluster now): stop them first
    if pgrep -u "$(id -u)" -f 'zray[.](gcs|raylet)' >/dev/null 2>&1; then
        zray_cli stop >/dev/null
    fi
    if ! nohup "$PYTHON" -m zray._private.cli start --cluster-key-file "$KEY_FILE" "$@" \
            >"$LOG" 2>&1 </dev/null; then
        cat "$LOG" >&2
        die "zray start failed (log: $LOG)"
    fi
    cat "$LOG"
}

cmd=${1:-}
[ -n "$cmd" ] || die "give a command: install, write-key, read-key, new-key, start-head, start-worker, install-unit, nodes, stop"
shift
case $cmd in
install)
    if "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("zray") is None)' 2>/dev/null; then
        echo "zray already installed for $PYTHON"
        exit 0
    fi
    [ -n "${ZRAY_VENV:-}" ] || die "zray does not import with $PYTHON; set venv: in the cluster config (zray up then creates it and pip installs zray), or install zray there yourself"
    [ -x "$ZRAY_VENV/bin/python" ] || python3 -m venv "$ZRAY_VENV"
    "$ZRAY_VENV/bin/pip" install -q "${ZRAY_PIP_INSTALL:-zray}"
    "$PYTHON" -c 'import zray' || die "zray still does not import with $PYTHON after pip install into $ZRAY_VENV"
    echo "installed ${ZRAY_PIP_INSTALL:-zray} into $ZRAY_VENV"
    ;;
write-key)
    private_dir "$(dirname "$KEY_FILE")"
    tmp="$KEY_FILE.tmp.$$"
    (umask 077 && cat >"$tmp")
    [ -s "$tmp" ] || { rm -f "$tmp"; die "no key on stdin"; }
    mv -f "$tmp" "$KEY_FILE"
    ;;
read-key)
    [ -f "$KEY_FILE" ] || exit 3
    cat "$KEY_FILE"
    ;;
new-key)
    private_dir "$(dirname "$KEY_FILE")"
    [ -f "$KEY_FILE" ] || "$PYTHON" -c 'import sys; from zray.broker import security; security.create_key_file(sys.argv[1])' "$KEY_FILE"
    ;;
start-head)
    start_detached --head "$@"
    ;;
start-worker)
    [ $# -ge 1 ] || die "start-worker needs the head's HOST:PORT"
    address=$1; shift
    start_detached --address="$address" "$@"
    ;;
install-unit)
    [ $# -eq 1 ] || die "install-unit needs the unit's name"
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$UNIT_DIR/$1" ] && cmp -s "$tmp" "$UNIT_DIR/$1" \
            && systemctl is-active --quiet "$1"; then
        rm -f "$tmp"; echo "$1 unchanged and active"; exit 0
    fi
    $SUDO install -m 0644 "$tmp" "$UNIT_DIR/$1"
    rm -f "$tmp"
    $SUDO systemctl daemon-reload
    if systemctl is-active --quiet "$1"; then
        $SUDO systemctl enable "$1" && $SUDO systemctl restart "$1"    # the unit changed
    else
        $SUDO systemctl enable --now "$1"
    fi
    ;;
nodes)
    [ $# -eq 1 ] || die "nodes needs the head's HOST:PORT"
    # nothing listening: say so at once (zray list would wait its connect timeout)
    "$PYTHON" -c 'import socket, sys; h, p = sys.argv[1].rsplit(":", 1); socket.create_connection((h, int(p)), 1).close()' "$1" 2>/dev/null \
        || { echo "nothing listens at $1" >&2; exit 4; }
    zray_cli list nodes --format json --address "$1" --cluster-key-file "$KEY_FILE"
    ;;
stop)
    for unit in zray-head.service zray-worker.service; do
        if [ -f "$UNIT_DIR/$unit" ]; then
            $SUDO systemctl disable --now "$unit" \
                || echo "zray-bootstrap: systemctl disable --now $unit failed; removing the unit anyway" >&2
            $SUDO rm -f "$UNIT_DIR/$unit"
            $SUDO systemctl daemon-reload
            echo "removed $unit"
        fi
    done
    if "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("zray") is None)' 2>/dev/null; then zray_cli stop; fi
    ;;
*)
    die "unknown command $cmd"
    ;;
esac
