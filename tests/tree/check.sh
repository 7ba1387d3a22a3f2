#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Checks of the source tree itself, run by ctest (label `tree`):
#   check.sh format   every C and C++ file is as clang-format (the repository's .clang-format) writes it
#   check.sh spdx     every source file carries "SPDX-License-Identifier: Apache-2.0"
#   check.sh links    no project file points at documents outside the repository
# Files are those git tracks (a tree without git: every file under the source folder).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

list() {  # list PATTERN... : tracked files matching the patterns
  if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -- "$@"
  else
    for p in "$@"; do find . -path ./build -prune -o -type f -name "${p##*/}" -print | sed 's|^\./||'; done
  fi
}

case "${1:-}" in
format)
  command -v clang-format >/dev/null || { echo "clang-format not installed: skipped"; exit 77; }
  # 25 files a clang-format, two at a time (one process a file spent most of its time starting
  # up); it goes through every file it is given and names each that differs.
  out=$(list '*.c' '*.h' '*.cpp' '*.hpp' | xargs -r -d '\n' -n 25 -P 2 clang-format --dry-run --Werror 2>&1) && exit 0
  bad=$(printf '%s\n' "$out" | sed -n 's/^\(.*\):[0-9][0-9]*:[0-9][0-9]*: error: code should be clang-formatted.*/\1/p' | sort -u)
  [ -n "$bad" ] || { printf '%s\n' "$out"; exit 1; }  # it failed for another reason: say what it said
  while IFS= read -r f; do echo "not formatted: $f (clang-format -i $f)"; done <<<"$bad"
  exit 1
  ;;
spdx)
  bad=0
  while IFS= read -r f; do
    head -n 3 "$f" | grep -q 'SPDX-License-Identifier: Apache-2.0' || { echo "no SPDX line: $f"; bad=1; }
  done < <(list '*.c' '*.h' '*.cpp' '*.hpp' '*.py' '*.sh' 'CMakeLists.txt' '*.cmake' '*.cmake.in')
  exit $bad
  ;;
links)
  # The team's working documents are not part of the project: its files must stand alone.
  if list '*' | grep -v '^tests/tree/check.sh$' | xargs grep -l -E 'design\.md|aiosmtpd-behaviour\.md|plugin-abi\.md' 2>/dev/null; then
    echo "the files above point at documents that are not in the repository"
    exit 1
  fi
  ;;
*)
  echo "usage: $0 format|spdx|links" >&2
  exit 2
  ;;
esac
