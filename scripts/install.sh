#!/usr/bin/env bash
# Install everything tracekit needs on a Debian or Ubuntu host, as root:
#   system packages (bcc, kernel headers or the documented fallback, bpftrace, QEMU for the labs),
#   tracefs mounted, and a virtual environment .venv/ (with the system site packages, so Debian's
#   python3-bpfcc is importable) holding tracekit and its Python dependencies.
# Usage: scripts/install.sh [--spark] [--demo]
#   --spark: also a Java runtime (Debian's default-jre-headless) and pyspark (the extra tracekit[spark]),
#            for 'tracekit fleet summary --engine spark'
#   --demo:  then run 'tracekit demo'
set -euo pipefail
cd "$(dirname "$0")/.."

spark=0
demo=0
for arg in "$@"; do
    case "$arg" in
        --spark) spark=1 ;;
        --demo) demo=1 ;;
        *) printf 'install: error: unknown option %s (expected --spark, --demo)\n' "$arg" >&2; exit 2 ;;
    esac
done

log() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
command -v apt-get >/dev/null || die "needs a Debian or Ubuntu host (apt-get not found)"

export DEBIAN_FRONTEND=noninteractive
# bcc, bpftrace: recording; qemu-*, busybox-static, cpio, zstd, xz-utils, mmdebstrap, e2fsprogs: the labs;
# chromium: the test that renders the HTML report in a real browser; make, gcc, libc6-dev: the tests build
# the kernel's KVM selftests from Debian's linux-source (fetched into the lab cache, not installed);
# patch, bc, bison, flex, libssl-dev, libelf-dev, dwarves and the other architecture's gcc: the tests apply
# the project's kernel patches and generate lab kernel configs (tracekit/lab/kbuild.py TOOL_PACKAGES).
PACKAGES=(python3 python3-venv python3-pip python3-bpfcc bpftrace qemu-system-x86 qemu-system-arm
          qemu-utils busybox-static cpio zstd xz-utils mmdebstrap e2fsprogs chromium make gcc libc6-dev
          patch bc bison flex libssl-dev libelf-dev dwarves)
case "$(dpkg --print-architecture)" in
    amd64) PACKAGES+=(gcc-aarch64-linux-gnu) ;;
    arm64) PACKAGES+=(gcc-x86-64-linux-gnu) ;;
esac
# Spark runs on a Java runtime: any Debian JRE that provides java 17 or newer (Spark 4 needs 17+).
[ "$spark" -eq 1 ] && ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])' && PACKAGES+=(default-jre-headless)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Kernel headers for bcc: the running kernel's, else the distribution's as a fallback that is safe
# for tracepoint programs (their argument layouts come from tracefs, not from headers).
release="$(uname -r)"
build="/lib/modules/$release/build"
if [ ! -e "$build" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
    if apt-get install -y -qq "linux-headers-$release" >/dev/null 2>&1; then
        log "installed linux-headers-$release"
    else
        arch="$(dpkg --print-architecture)"
        meta="linux-headers-$arch"
        grep -qi ubuntu /etc/os-release && meta="linux-headers-generic"
        log "no headers packaged for $release; installing $meta as the fallback"
        apt-get update -qq
        apt-get install -y -qq "$meta" >/dev/null
        hdr="$(ls -d /usr/src/linux-headers-*-"$arch" /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -1 || true)"
        [ -n "$hdr" ] || die "no kernel headers found under /usr/src after installing $meta"
        common="${hdr%-"$arch"}-common"
        mkdir -p "/lib/modules/$release"
        ln -sfn "$hdr" "$build"
        [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$release/source"
        log "linked $build -> $hdr (fallback: 'tracekit doctor' reports it)"
    fi
fi

if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || log "could not mount tracefs (tracekit doctor will say why)"
fi

if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
pipelog="$(mktemp)"
extras=test
[ "$spark" -eq 1 ] && extras=test,spark
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" >"$pipelog" 2>&1; then
    cat "$pipelog" >&2; rm -f "$pipelog"; die "pip could not install tracekit into .venv"
fi
rm -f "$pipelog"
.venv/bin/python -c 'import tracekit.cli' || die "tracekit did not install into .venv"
# pip's console script lets a Ctrl-C during Python's start-up print a traceback: start Python with the
# stop signals blocked until tracekit handles them (tracekit/launcher.py)
log "$(.venv/bin/python -m tracekit.launcher .venv/bin/tracekit)"
log "done: .venv/bin/tracekit"

if [ "$demo" -eq 1 ]; then
    exec .venv/bin/tracekit demo
fi
