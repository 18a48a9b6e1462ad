#!/usr/bin/env bash
# The CUDA checks and figures on the GPU machine, which has a driver and CUDA but no Rust
# toolchain and no network. Two halves:
#
#   benches/gpu.sh pack      here: builds the binaries (release, `cuda` feature), packs the
#                            default bundle for the trip (see benches/gpu.rs) and writes both,
#                            xz-compressed, to .gpu/ (ignored by git; ~45 MB)
#   benches/gpu.sh run       there, from the repository root, with .gpu/ carried: the kernel
#                            tests, the GPU-vs-CPU and `serve --device cuda:0` tests, the
#                            figures (benches/gpu.rs), and compute-sanitizer's memcheck over the
#                            kernel tests; logs and the figures go to $OUT (or .gpu/out)
#   benches/gpu.sh profile   there: where a pass spends its GPU time, stage by stage
set -euo pipefail
cd "$(dirname "$0")/.."

pack() {
    mkdir -p .gpu/bin
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    cargo build --release --bin nudge
    exe() { # the executable cargo builds for test or bench target $3 (not the binaries it needs)
        cargo "$@" --no-run --message-format=json 2>/dev/null |
            python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("name") == sys.argv[1] and t.get("kind") != ["bin"]:
        print(m["executable"])' "${@: -1}" | tail -1
    }
    cp target/release/nudge .gpu/bin/nudge
    cp "$(exe test --release -p nudge-kernels --test kernels)" .gpu/bin/kernels-test
    cp "$(exe test --release --test e2e)" .gpu/bin/e2e-test
    cp "$(exe bench --bench gpu)" .gpu/bin/gpu-bench
    strip .gpu/bin/*
    cargo bench --bench gpu -- --pack target/gpu-pack
    tar -C .gpu -cf - bin | xz -T2 -6 > .gpu/bin.tar.xz
    tar -C target/gpu-pack -cf - e5 minilm | xz -T2 -6 > .gpu/pack.tar.xz
    rm -rf .gpu/bin
    du -sh .gpu/*
}

setup() {
    mkdir -p "$out" /tmp/g
    xz -dc .gpu/bin.tar.xz | tar -C /tmp/g -xf -
    xz -dc .gpu/pack.tar.xz | tar -C /tmp/g -xf -
    # CUDA's own libraries, matching the driver (not a newer NVRTC from some wheel: its PTX
    # could be too new for the driver to load).
    for lib in libnvrtc.so libcublas.so; do
        for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
            $(find /usr/local /opt /usr/lib -name "$lib*" 2>/dev/null | xargs -r -n1 dirname | sort -u); do
            ls "$d/$lib"* >/dev/null 2>&1 || continue
            export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
            break
        done
    done
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt" || true
}

run() {
    out=${OUT:-.gpu/out}
    setup
    export NUDGE_REQUIRE_GPU=1 NUDGE_REQUIRE_NVRTC=1 NUDGE_BIN=/tmp/g/bin/nudge NUDGE_GPU_BUNDLE=/tmp/g/e5
    status=0
    /tmp/g/bin/kernels-test --test-threads 1 2>&1 | tee "$out/kernels-test.txt" || status=1
    /tmp/g/bin/e2e-test gpu:: --test-threads 1 --nocapture 2>&1 | tee "$out/gpu-test.txt" || status=1
    /tmp/g/bin/gpu-bench --from /tmp/g --out "$out/figures.md" 2>&1 | tee "$out/bench.txt" || status=1
    if command -v compute-sanitizer >/dev/null; then
        timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 /tmp/g/bin/kernels-test --test-threads 1 \
            > "$out/memcheck.txt" 2>&1 || { echo "memcheck: exit $?"; status=1; }
        tail -3 "$out/memcheck.txt"
    fi
    return $status
}

# Where a pass spends its time: each stage's GPU time from events recorded between the
# launches, next to the wall time of a plain pass. (Nsight Compute was tried first: with the
# clocks left alone, as they must be there, it showed every small kernel at ~10 us, far over
# what the same passes take unprofiled.)
profile() {
    out=${OUT:-.gpu/out}
    setup
    /tmp/g/bin/gpu-bench --from /tmp/g --profile 2>&1 | tee "$out/profile.txt"
}

case "${1:-}" in
    pack) pack ;;
    run) run ;;
    profile) profile ;;
    *) echo "usage: $0 pack|run|profile" >&2; exit 2 ;;
esac
