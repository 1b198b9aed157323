#!/usr/bin/env bash
# Disk-full test on a real file system that runs out of space: mounts a 1 MiB tmpfs, runs the
# WalDiskFullTest case of storage_tests against it, and unmounts it whatever happens.
# Needs root (CI runs as root); exits 77 (skipped) otherwise.
#
#   wal_tmpfs_full_test.sh STORAGE_TESTS_BIN
set -euo pipefail
bin=$1
if [ "$(id -u)" != 0 ]; then
  echo "skipped: mounting a tmpfs needs root"
  exit 77
fi
mnt=$(mktemp -d /tmp/mailrail-wal-tmpfs-XXXXXX)
cleanup() {
  umount "$mnt" 2>/dev/null || true
  rmdir "$mnt"
}
trap cleanup EXIT
mount -t tmpfs -o size=1m tmpfs "$mnt"
MAILRAIL_WAL_TMPFS_DIR="$mnt" "$bin" --gtest_filter='WalDiskFullTest.*'
