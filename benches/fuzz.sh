#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a fixed time (`benches/fuzz.sh [SECONDS per target]`,
# default 60) with libFuzzer through cargo-fuzz, seeded from the project's real files. Not run by
# CI. A crash leaves its input in fuzz/artifacts/<target>/: fix the code, then keep the input as a
# regression test in the crate that crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes nightly-only flags (sanitizers, coverage); this machine has one stable
# toolchain, which accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
seed() {
  local t=$1; shift
  mkdir -p "fuzz/corpus/$t"
  for f in "$@"; do [ -f "$f" ] && cp "$f" "fuzz/corpus/$t/"; done
  true
}
seed reward_expr examples/sim/reward.toml
seed catalog examples/shop/catalog.toml examples/sim/catalog.toml
seed rules examples/shop/rules.toml examples/sim/rules.toml
seed bundle_manifest models/bundles/default/manifest.json models/bundles/minilm-en/manifest.json
# A policy seed: a registry version's manifest, a NUL, its weights.
if v=$(ls -d examples/shop/var/policies/v* models/policy-registry/v* 2>/dev/null | head -1) && [ -n "$v" ]; then
  mkdir -p fuzz/corpus/policy && { cat "$v/manifest.json"; printf '\0'; cat "$v/policy.safetensors"; } > fuzz/corpus/policy/seed
fi
for target in reward_expr catalog rules policy bundle_manifest decide_request records; do
  echo "== $target: ${secs}s"
  cargo fuzz run --fuzz-dir fuzz "$target" -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 | grep -E "^#[0-9]+.*(DONE|pulse)|ERROR|panicked|SUMMARY|Done" | tail -3
done
crashes=$(find fuzz/artifacts -type f 2>/dev/null | wc -l)
if [ "$crashes" -gt 0 ]; then find fuzz/artifacts -type f; echo "$crashes crashing inputs"; exit 1; fi
echo "no crashes"
