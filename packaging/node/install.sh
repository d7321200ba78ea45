#!/bin/sh
# Installs nodegate on a node without a package manager (or into an image being built), with
# exactly the files and setup steps of the nodegate-node .deb and .rpm: the packages are built
# by running this script with --destdir, and their maintainer scripts call the same library
# (nodegate-sshd.sh) as this script does.
#
# Run as root from the unpacked nodegate-node-VERSION-linux-ARCH.tar.gz (which holds this
# script, authorized-keys-cmd, nodegate-agent and the files next to it):
#
#   ./install.sh                      install and turn on (user, cache dir, units, sshd drop-ins);
#                                     run again to upgrade (a running nodegate-agent is restarted)
#   ./install.sh --prefix /usr/local  the same under another prefix (read-only /usr: CoreOS)
#   ./install.sh --uninstall          undo: drop-in removed, units off, files removed
#   ./install.sh --uninstall --purge  also remove /etc/nodegate and /var/lib/nodegate
#   ./install.sh --destdir DIR        only copy the files under DIR (how packages are built)
#   ./install.sh --list-units         print the units enabled on install (for the packages' scripts)
#
# Options: --binary PATH (default: ./authorized-keys-cmd), --agent-binary PATH (default:
# ./nodegate-agent), --systemd-dir DIR (default PREFIX/lib/systemd/system for /usr,
# /etc/systemd/system otherwise).
# Environment: NODEGATE_SSHD_RELOAD=no to never reload sshd (see nodegate-sshd.sh).
set -eu

src=$(cd "$(dirname "$0")" && pwd)
prefix=/usr
destdir=
binary=$src/authorized-keys-cmd
agent_binary=$src/nodegate-agent
systemd_dir=
action=install
purge=no

usage() {
  sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --agent-binary) agent_binary=${2:?--agent-binary needs a path}; shift 2 ;;
    --systemd-dir) systemd_dir=${2:?--systemd-dir needs a directory}; shift 2 ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=yes; shift ;;
    --list-units) action=list-units; shift ;;
    -h | --help) usage ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage ;;
  esac
done

libexec=$prefix/libexec/nodegate
share=$prefix/share/nodegate
man8=$prefix/share/man/man8
if [ -z "$systemd_dir" ]; then
  if [ "$prefix" = /usr ]; then systemd_dir=/usr/lib/systemd/system; else systemd_dir=/etc/systemd/system; fi
fi
# The systemd units, listed nowhere else: every file in systemd/ next to this script is installed,
# and those with an [Install] section are enabled and started (the others are started by them:
# nodegate-cache-refresh.service by its timer). The .deb and .rpm scripts get the list from
# `install.sh --list-units` when packaging/build-packages builds them.
unit_files=
units=
for unit in "$src"/systemd/*; do
  [ -f "$unit" ] || continue
  unit_files="$unit_files ${unit##*/}"
  if grep -q '^\[Install\]' "$unit"; then units="$units ${unit##*/}"; fi
done
unit_files=${unit_files# }
units=${units# }
[ -n "$units" ] || { echo "install.sh: no systemd units with an [Install] section in $src/systemd" >&2; exit 1; }
if [ "$action" = list-units ]; then
  echo "$units"
  exit 0
fi

if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (it installs into $prefix, /etc and /var/lib)" >&2
  exit 1
fi

# Copies a text file, pointing it at PREFIX when that is not /usr.
put_text() { # MODE SOURCE TARGET
  mkdir -p "$(dirname "$3")"
  sed -e "s|/usr/libexec/nodegate|$libexec|g" -e "s|/usr/share/nodegate|$share|g" "$2" >"$3.tmp"
  chmod "$1" "$3.tmp"
  mv -f "$3.tmp" "$3"
}

# Copies an executable into place by rename, so that a running copy (sshd's command, the agent)
# keeps its file and the next start gets the new one whole.
put_binary() { # SOURCE TARGET
  cp "$1" "$2.tmp"
  chmod 0755 "$2.tmp"
  mv -f "$2.tmp" "$2"
}

install_files() { # ROOT
  root=$1
  [ -f "$binary" ] || { echo "install.sh: $binary not found (pass --binary PATH)" >&2; exit 1; }
  [ -f "$agent_binary" ] || { echo "install.sh: $agent_binary not found (pass --agent-binary PATH)" >&2; exit 1; }
  mkdir -p "$root$libexec"
  put_binary "$binary" "$root$libexec/authorized-keys-cmd"
  put_binary "$agent_binary" "$root$libexec/nodegate-agent"
  # Earlier versions shipped a shell script for what `authorized-keys-cmd export-kubeconfig` does.
  rm -f "$root$libexec/export-node-kubeconfig"
  put_text 0644 "$src/nodegate-sshd.sh" "$root$share/nodegate-sshd.sh"
  put_text 0644 "$src/50-nodegate.conf" "$root$share/50-nodegate.conf"
  put_text 0644 "$src/51-nodegate-expose-auth-info.conf" "$root$share/51-nodegate-expose-auth-info.conf"
  for unit in $unit_files; do
    put_text 0644 "$src/systemd/$unit" "$root$systemd_dir/$unit"
  done
  mkdir -p "$root$man8"
  for page in authorized-keys-cmd nodegate-agent; do
    gzip -9n <"$src/$page.8" >"$root$man8/$page.8.gz"
    chmod 0644 "$root$man8/$page.8.gz"
  done
  # The config is the administrator's once installed: never overwritten on a live system.
  if [ -n "$destdir" ] || [ ! -e /etc/nodegate/authorized-keys-cmd.toml ]; then
    put_text 0644 "$src/authorized-keys-cmd.toml" "$root/etc/nodegate/authorized-keys-cmd.toml"
  fi
  chmod 0755 "$root/etc/nodegate"
}

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

if [ -n "$destdir" ]; then
  install_files "$destdir"
  exit 0
fi

case $action in
  install)
    # An upgrade: the agent runs the old binary until it is restarted (below).
    agent_was_active=no
    if have_systemd && systemctl is-active --quiet nodegate-agent.service; then agent_was_active=yes; fi
    install_files ""
    NODEGATE_SHARE_DIR=$share NODEGATE_LIBEXEC_DIR=$libexec
    . "$share/nodegate-sshd.sh"
    nodegate_setup_user_and_dirs
    "$libexec/authorized-keys-cmd" export-kubeconfig 2>/dev/null || echo "install.sh: no usable kubelet kubeconfig yet; nodegate-node-credentials.service exports it when the kubelet has one ('$libexec/authorized-keys-cmd export-kubeconfig' says why now)" >&2
    if command -v systemctl >/dev/null 2>&1; then
      if have_systemd; then
        systemctl daemon-reload
        systemctl enable --now $units
        if [ "$agent_was_active" = yes ]; then systemctl restart nodegate-agent.service; fi
      else
        systemctl enable $units # an image being built: they start on boot
      fi
    else
      echo "install.sh: no systemd; run '$libexec/authorized-keys-cmd export-kubeconfig' as root when the kubelet's credentials change and 'authorized-keys-cmd refresh' as user nodegate every few minutes; nodegate-agent (which ends revoked sessions) is not started" >&2
    fi
    nodegate_sshd_enable
    ;;
  uninstall)
    NODEGATE_SHARE_DIR=$share NODEGATE_LIBEXEC_DIR=$libexec
    if [ -f "$share/nodegate-sshd.sh" ]; then
      . "$share/nodegate-sshd.sh"
    else
      . "$src/nodegate-sshd.sh"
    fi
    nodegate_sshd_disable
    if command -v systemctl >/dev/null 2>&1; then
      if have_systemd; then
        systemctl disable --now $units || true
      else
        systemctl disable $units || true
      fi
    fi
    for unit in $unit_files; do rm -f "$systemd_dir/$unit"; done
    have_systemd && systemctl daemon-reload
    rm -f "$libexec/authorized-keys-cmd" "$libexec/nodegate-agent" "$libexec/export-node-kubeconfig" \
      "$share/nodegate-sshd.sh" "$share/50-nodegate.conf" "$share/51-nodegate-expose-auth-info.conf" \
      "$man8/authorized-keys-cmd.8.gz" "$man8/nodegate-agent.8.gz"
    rmdir "$libexec" "$share" 2>/dev/null || true
    if [ "$purge" = yes ]; then
      rm -rf /etc/nodegate /var/lib/nodegate
    fi
    echo "install.sh: nodegate removed" >&2
    ;;
esac
