#!/usr/bin/env bash
# `make arm-check`: every CPU artifact verified on aarch64 with no ARM hardware, then compared image by
# image with this machine's run of the same files.
#
# An aarch64 Debian Python (bookworm's 3.11, unpacked from its .debs, no maintainer scripts) and the
# aarch64 wheels of mnisttk's edge dependencies (onnxruntime, numpy, click, pillow, ai-edge-litert) run
# under qemu-user inside proot, which binds an ARM /proc/cpuinfo and CPU list in: onnxruntime's cpuinfo
# reads them at import and crashes on the host's x86 ones. Emulated timings are not a device's: the
# outputs file says so (MNISTTK_MACHINE_NOTE) and compare never gates timing.
#
# Cached in $ARM_CACHE (default .cache/arm64): the sysroot, the wheels; rebuilt only when missing.
# Exit 0 when every artifact agrees within verify's gates on both machines; the table is on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CACHE=${ARM_CACHE:-.cache/arm64}
DIR=${ARM_DIR:-exported}
OUT=${ARM_OUT:-.cache/arm64/out}  # not under build/: `make wheel` empties that
TARGETS=${ARM_TARGETS:-onnx,ort,tflite}
# The emulated CPU: a Neoverse N1 (Armv8.2 with dotprod: Graviton2, Ampere Altra; a Raspberry Pi 5's
# Cortex-A76 is its sibling). qemu's default "max" CPU adds i8mm, SVE2 and SME: there XNNPACK's int8
# path gave 16% accuracy on our LiteRT int8 file (98.7% on a Neoverse N1, and on LiteRT's builtin
# kernels, on a 300-image probe), whether by qemu's emulation or by XNNPACK's kernels for those
# features no device here tells. ARM_CPU=max reproduces it.
QEMU_CPU=${ARM_CPU:-neoverse-n1}
mkdir -p "$CACHE" "$OUT"
say() { echo "arm-check: $*" >&2; }

need_tools() {
    command -v qemu-aarch64-static >/dev/null && command -v proot >/dev/null && return
    say "installing qemu-user-static and proot (Debian packages)"
    [ "$(id -u)" = 0 ] || { echo "Error: qemu-user-static and proot are missing; install them (root needed)" >&2; exit 2; }
    apt-get install -y -q qemu-user-static proot >/dev/null
}

sysroot() {
    [ -x "$CACHE/root/usr/bin/python3.11" ] && return
    say "building the aarch64 sysroot in $CACHE/root (Debian bookworm arm64 packages)"
    dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64 && apt-get update -q >/dev/null; }
    rm -rf "$CACHE/debs" "$CACHE/root.tmp" && mkdir -p "$CACHE/debs" "$CACHE/root.tmp"
    (cd "$CACHE/debs" && apt-get download -q python3.11-minimal:arm64 libpython3.11-minimal:arm64 \
        libpython3.11-stdlib:arm64 libc6:arm64 libexpat1:arm64 zlib1g:arm64 libffi8:arm64 libssl3:arm64 \
        libgcc-s1:arm64 libstdc++6:arm64 libbz2-1.0:arm64 liblzma5:arm64 libsqlite3-0:arm64 libncursesw6:arm64 \
        libtinfo6:arm64 libreadline8:arm64 libuuid1:arm64 libcrypt1:arm64 libnsl2:arm64 libtirpc3:arm64 >/dev/null 2>&1)
    for d in "$CACHE"/debs/*.deb; do dpkg -x "$d" "$CACHE/root.tmp"; done
    mv "$CACHE/root.tmp" "$CACHE/root"
}

site() {
    # the host's versions, so both machines run the same runtime release
    local ort litert plat=()
    ort=$($PY -c 'import onnxruntime; print(onnxruntime.__version__)')
    litert=$($PY -c 'import importlib.metadata as m; print(m.version("ai-edge-litert"))' 2>/dev/null || true)
    for v in 2014 2_17 2_27 2_28; do plat+=(--platform "manylinux${v/#2_/_2_}_aarch64"); done
    local stamp="onnxruntime==$ort ai-edge-litert==${litert:-none}"
    if [ "$(cat "$CACHE/site.stamp" 2>/dev/null)" != "$stamp" ]; then
        say "aarch64 wheels for $stamp"
        rm -rf "$CACHE/site" "$CACHE/wheels" && mkdir -p "$CACHE/wheels"
        local want=("onnxruntime==$ort" numpy click pillow)
        [ -n "$litert" ] && want+=("ai-edge-litert==$litert")
        $PY -m pip download -q "${plat[@]}" --python-version 3.11 --only-binary=:all: -d "$CACHE/wheels" "${want[@]}" 2>/dev/null
        $PY -m pip install -q --target "$CACHE/site" "${plat[@]}" --python-version 3.11 --only-binary=:all: \
            --no-deps "$CACHE"/wheels/*.whl 2>/dev/null
        echo "$stamp" > "$CACHE/site.stamp"
    fi
    # mnisttk itself: the wheel just built (what users install), fresh every run
    rm -rf "$CACHE/mnisttk" && $PY -m pip install -q --target "$CACHE/mnisttk" --no-deps build/wheel/mnisttk-*.whl
}

fake_cpu() {  # a 2-core Neoverse-N1-like CPU (NEON, dotprod): what onnxruntime's cpuinfo reads at import
    mkdir -p "$CACHE/fake"
    : > "$CACHE/fake/cpuinfo"
    for i in 0 1; do printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' $i >> "$CACHE/fake/cpuinfo"; done
    echo 0-1 > "$CACHE/fake/cpus"
}

export_folder() {
    [ -f "$DIR/manifest.json" ] && return
    DIR="$CACHE/export"
    [ -f "$DIR/manifest.json" ] && return
    say "no export in ${ARM_DIR:-exported}: training a 1-epoch model into $DIR (make demo makes the full one)"
    .venv/bin/mnisttk train --epochs 1 --device cpu --checkpoint "$DIR/cnn.pt" --quiet >&2
    .venv/bin/mnisttk export --checkpoint "$DIR/cnn.pt" --dir "$DIR" --quantize --targets "$TARGETS" --quiet >/dev/null
}

need_tools
sysroot
site
fake_cpu
export_folder
DATA=${MNISTTK_DATA:-$HOME/.cache/mnisttk}
.venv/bin/mnisttk data --data-dir "$DATA" --quiet >/dev/null  # the test set both machines read
ABS_DIR=$(realpath "$DIR"); ABS_OUT=$(realpath "$OUT"); ABS_DATA=$(realpath "$DATA"); C=$(realpath "$CACHE")
rm -f "$OUT/x86_64.json" "$OUT/aarch64.json"

t0=$(date +%s)
say "x86-64 run: verify --no-torch on $DIR"
.venv/bin/mnisttk verify --dir "$DIR" --data-dir "$DATA" --no-torch --device cpu --quiet \
    --save-outputs "$OUT/x86_64.json" > "$OUT/x86_64.txt" || true
t1=$(date +%s)
say "aarch64 run (emulated): verify --no-torch --golden x86_64.json"
set +e
# What the guest reads and writes is copied into a host /tmp folder, seen at the same path because
# /tmp is bound: through a bind to another path, proot under qemu answers access() with "denied",
# and click refuses the file. The Python packages stay bound (imports do not ask access()).
G=$(mktemp -d /tmp/mnisttk-arm.XXXXXX)
trap 'rm -rf "$G"' EXIT
mkdir -p "$G/site" "$G/mnisttk" "$G/out"
cp -r "$ABS_DIR" "$G/export"
cp -r "$ABS_DATA" "$G/data"
cp "$OUT/x86_64.json" "$G/x86_64.json"
MNISTTK_MACHINE_NOTE="emulated aarch64 $QEMU_CPU (qemu-user on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)): timings are not a device's" \
PYTHONPATH="$G/mnisttk:$G/site" PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
proot -q "qemu-aarch64-static -cpu $QEMU_CPU" -r "$C/root" -b /proc -b /dev -b /tmp \
    -b "$C/fake/cpuinfo:/proc/cpuinfo" -b "$C/fake/cpus:/sys/devices/system/cpu/possible" \
    -b "$C/fake/cpus:/sys/devices/system/cpu/present" -b "$C/site:$G/site" -b "$C/mnisttk:$G/mnisttk" \
    -w / /usr/bin/python3.11 -m toolkit verify --dir "$G/export" --data-dir "$G/data" --no-torch --device cpu --quiet \
    --rounds 1 --row-timeout 3600 --golden "$G/x86_64.json" --save-outputs "$G/out/aarch64.json" > "$OUT/aarch64.txt"
arm_rc=$?
set -e
t2=$(date +%s)
cp "$G/out/aarch64.json" "$OUT/aarch64.json" 2>/dev/null || true
[ -f "$OUT/aarch64.json" ] || { cat "$OUT/aarch64.txt" >&2; echo "Error: the aarch64 run saved no outputs (exit $arm_rc)" >&2; exit 1; }
say "x86-64 verify $((t1 - t0)) s, aarch64 verify (emulated) $((t2 - t1)) s; outputs $(stat -c %s "$OUT/x86_64.json") and $(stat -c %s "$OUT/aarch64.json") bytes"
# OpenVINO runs on x86 only here (no aarch64 wheel is fetched): its rows are absent from the emulated run, by design
.venv/bin/mnisttk compare "$OUT/x86_64.json" "$OUT/aarch64.json" --allow-missing '*@openvino*' \
    --markdown "$OUT/compare.md" --json "$OUT/compare.json"
