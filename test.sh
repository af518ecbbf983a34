#!/usr/bin/env bash
# Runs runbox's whole test suite on this machine, as root. Installs what the tests need from
# Debian's packages first (runc for the bundle test; gcc and dpkg-deb for the test image, whose
# busybox comes from Debian's busybox-static package, unpacked, not installed).
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: runbox tests run real sandboxes and must run as root" >&2
  exit 1
fi

missing=()
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

export RUNBOX_TESTS_MUST_RUN=1
cargo test --locked "$@"
