#!/usr/bin/env bash
# Installs drizzle, its mount helpers and (with --systemd) the systemd units.
#
#   mount-helper/install.sh [--bin PATH] [--helper PATH] [--prefix DIR] [--sbin DIR] [--systemd]
#   mount-helper/install.sh --uninstall [--prefix DIR] [--sbin DIR]
#
# Without --bin it builds the release binaries first (cargo; the first build
# compiles RocksDB and takes a while). Installs:
#   PREFIX/bin/drizzle                  (PREFIX default /usr/local)
#   SBIN/mount.fuse.drizzle, SBIN/mount.drizzle   (SBIN default /sbin)
#   --systemd: /etc/systemd/system/drizzle-node.service, drizzle-mount@.service,
#              /usr/lib/sysusers.d/drizzle.conf, and /etc/drizzle/node.toml if missing
# --uninstall removes exactly those files (configs and data are kept).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
bin="" helper="" prefix=/usr/local sbin=/sbin systemd=0 uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --helper) helper="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --sbin) sbin="$2"; shift 2 ;;
    --systemd) systemd=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
units=(drizzle-node.service drizzle-mount@.service)

if [ "$uninstall" = 1 ]; then
  rm -fv "$prefix/bin/drizzle" "$sbin/mount.fuse.drizzle" "$sbin/mount.drizzle"
  for u in "${units[@]}"; do rm -fv "/etc/systemd/system/$u"; done
  rm -fv /usr/lib/sysusers.d/drizzle.conf
  command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
  exit 0
fi

if [ -z "$bin" ] || [ -z "$helper" ]; then
  if [ -z "$bin" ]; then
    "$root/scripts/setup"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/drizzle-target}"
    (cd "$root" && cargo build --release --workspace --bins)
    bin="$CARGO_TARGET_DIR/release/drizzle"
    helper="${helper:-$CARGO_TARGET_DIR/release/drizzle-mount-helper}"
  else
    # The helper is built next to drizzle; else build it (small, quick).
    helper="$(dirname "$bin")/drizzle-mount-helper"
    if [ ! -x "$helper" ]; then
      export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/drizzle-target}"
      (cd "$root" && cargo build --release -p mount-helper)
      helper="$CARGO_TARGET_DIR/release/drizzle-mount-helper"
    fi
  fi
fi
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable" >&2; exit 1; }
[ -x "$helper" ] || { echo "install.sh: $helper is not an executable" >&2; exit 1; }

install -D -m 0755 "$bin" "$prefix/bin/drizzle"
install -D -m 0755 "$helper" "$sbin/mount.fuse.drizzle"
install -D -m 0755 "$helper" "$sbin/mount.drizzle"
echo "installed $prefix/bin/drizzle, $sbin/mount.fuse.drizzle, $sbin/mount.drizzle"

if [ "$systemd" = 1 ]; then
  for u in "${units[@]}"; do
    sed "s#/usr/local/bin/drizzle#$prefix/bin/drizzle#g" "$root/systemd/$u" >"/etc/systemd/system/$u"
    chmod 0644 "/etc/systemd/system/$u"
  done
  install -D -m 0644 "$root/systemd/sysusers-drizzle.conf" /usr/lib/sysusers.d/drizzle.conf
  command -v systemd-sysusers >/dev/null && systemd-sysusers /usr/lib/sysusers.d/drizzle.conf || true
  install -d -m 0755 /etc/drizzle /etc/drizzle/vaults
  chmod 0700 /etc/drizzle/vaults
  if [ ! -e /etc/drizzle/node.toml ]; then
    printf '# drizzle-node.service settings; see docs/drizzle.example.toml\n[node]\ndonate = "10%%"\n' >/etc/drizzle/node.toml
  fi
  command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
  echo "installed the systemd units; start a node with: systemctl enable --now drizzle-node"
fi
