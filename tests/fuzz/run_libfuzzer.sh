#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Real fuzzing for a bounded time: builds the `fuzz` preset (clang, libFuzzer, ASan + UBSan) in
# build/fuzz and runs every target for SECONDS seconds (default: $ASIOSMTPD_FUZZ_SECONDS or 10),
# starting from the committed corpus tests/fuzz/corpus/<target>/.
#
#   bash tests/fuzz/run_libfuzzer.sh                 # what the dev test run does (ctest fuzz.libfuzzer)
#   bash tests/fuzz/run_libfuzzer.sh 600 engine      # a longer run of one target
#
# New inputs go to build/fuzz/corpus/<target>/ (not into the committed corpus: minimise and copy
# them by hand, see README.md); crashes to build/fuzz/artifacts/<target>/. Exit 77 (ctest: skipped)
# when clang's libFuzzer is not usable here; exit 1 on any finding.
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
seconds="${1:-${ASIOSMTPD_FUZZ_SECONDS:-10}}"
shift || true
targets=("$@")
all_targets=(engine address config proxy dsn bdat)
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
printf '#include <cstddef>\n#include <cstdint>\nextern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }\n' >"$probe/p.cpp"
if ! command -v clang++ >/dev/null || ! clang++ -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" 2>/dev/null; then
  echo "run_libfuzzer: clang++ with libFuzzer not available (Debian: clang, libclang-rt-14-dev); skipped"
  exit 77
fi

cd "$src"
# Configure once; later runs only rebuild what changed. Quiet unless something fails.
if [ ! -f build/fuzz/build.ninja ]; then
  cmake --preset fuzz >"$probe/configure.log" 2>&1 || { cat "$probe/configure.log"; exit 1; }
fi
# The targets are named here rather than taken from the preset, so that a new one needs no
# CMakePresets.json edit.
cmake --build --preset fuzz --target "${all_targets[@]/#/fuzz_}" >"$probe/build.log" 2>&1 || { cat "$probe/build.log"; exit 1; }

status=0
for t in "${targets[@]}"; do
  corpus="build/fuzz/corpus/$t"
  artifacts="build/fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  echo "run_libfuzzer: $t for ${seconds}s"
  # -timeout: one input taking > 10 s is a hang; -rss_limit_mb: memory growth is a finding.
  if ! build/fuzz/bin/fuzz_"$t" "$corpus" "tests/fuzz/corpus/$t" "${dict[@]}" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
      -artifact_prefix="$artifacts/" -print_final_stats=1 >"$probe/$t.log" 2>&1; then
    tail -n 60 "$probe/$t.log"
    echo "run_libfuzzer: $t FAILED; the input is in $artifacts/"
    status=1
  else
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)' "$probe/$t.log" || true
  fi
done
exit $status
