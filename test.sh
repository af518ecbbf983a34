#!/usr/bin/env bash
# Runs runbox's whole test suite, as root: on this host, then again in a qemu guest whose
# only cgroup hierarchy is cgroup v2 (with swap on), and fails if either fails.
#
#   ./test.sh            both
#   ./test.sh host       this host only (its cgroup layout, v1 hybrid here)
#   ./test.sh guest      the cgroup v2 guest only (tests/vm/run.sh; builds on the host first)
#   ./test.sh host ARGS  extra arguments go to `cargo test` (e.g. `--test hostile`)
#
# With no extra arguments, the host part also runs every fuzz target for a bounded time
# (fuzz/run.sh; RUNBOX_FUZZ_SECONDS per target, 20 by default, 0 to skip).
#
# Installs what the tests need from Debian's packages first: runc for the bundle test; gcc
# and dpkg-deb for the test image, whose busybox comes from Debian's busybox-static package,
# unpacked, not installed; umoci, skopeo, docker-registry, htpasswd and openssl for the
# image tests; qemu-system-x86 and (fetched, never installed) Debian's kernel package for
# the guest.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: runbox tests run real sandboxes and must run as root" >&2
  exit 1
fi

where=all
case "${1:-}" in
  host|guest|all) where=$1; shift ;;
esac
# Inside the guest, the guest is the host.
[ -n "${RUNBOX_IN_GUEST:-}" ] && where=host

missing=()
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
# The image tests: layouts made with umoci, archives and zstd layers with skopeo, a real
# registry (Debian's docker-registry), certificates and basic-auth files for it.
command -v umoci >/dev/null 2>&1 || missing+=(umoci)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The worker tests and bench: a real redis-server on 127.0.0.1.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "$where" != host ]; then
  command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  # Installing docker-registry must not start its service (it would listen on every address):
  # Debian's policy-rc.d convention keeps maintainer scripts from starting services.
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$policy" ]; then rm -f "$policy"; fi
fi

export RUNBOX_TESTS_MUST_RUN=1
host_status=0
fuzz_status=0
guest_status=0
if [ "$where" != guest ]; then
  echo "test.sh: the suite on this host" >&2
  cargo test --locked "$@" || host_status=$?
  # The fuzz targets, for a bounded time each, with the whole suite only (fuzz/run.sh: a
  # separate nightly build; RUNBOX_FUZZ_SECONDS=0 skips them).
  fuzz_secs=${RUNBOX_FUZZ_SECONDS:-20}
  if [ "$#" -eq 0 ] && [ "$fuzz_secs" != 0 ]; then
    echo "test.sh: the fuzz targets, $fuzz_secs s each (fuzz/run.sh)" >&2
    bash fuzz/run.sh "$fuzz_secs" || fuzz_status=$?
  fi
fi
if [ "$where" != host ]; then
  # Everything the guest runs is built here: a build under emulation would take far too long.
  cargo test --locked --no-run "$@" >/dev/null 2>&1 || cargo test --locked --no-run "$@"
  cargo build --locked --quiet --examples
  # The tests' busybox image too: the guest has no network to fetch busybox-static with.
  bash rootfs/build-image.sh "${CARGO_TARGET_DIR:-$(pwd)/target}/tmp/test-image" >/dev/null
  echo "test.sh: the suite in a cgroup v2 guest (tests/vm/run.sh)" >&2
  args=""
  [ "$#" -gt 0 ] && args=$(printf ' %q' "$@")
  bash tests/vm/run.sh --swap 1G "cargo test --locked$args" || guest_status=$?
fi
if [ "$host_status" != 0 ] || [ "$fuzz_status" != 0 ] || [ "$guest_status" != 0 ]; then
  echo "test.sh: FAILED (host: $host_status, fuzzing: $fuzz_status, cgroup v2 guest: $guest_status)" >&2
  exit 1
fi
