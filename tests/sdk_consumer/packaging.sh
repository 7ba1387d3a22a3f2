#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Steps of the packaging tests (tests/sdk_consumer/CMakeLists.txt runs each as a ctest test).
#   install             cmake --install the build tree into $WORK/prefix, check the layout
#   cmake_examples      build sdk/examples (as installed) with find_package(asiosmtpd-sdk),
#                       run the example's own test-kit unit test
#   pkgconfig_examples  build the same examples with pkg-config and make, run the unit test
#   deb                 cpack -G DEB; check contents, control fields and dependencies
#   exports FILE...     nm -D: each plugin exports exactly asiosmtpd_plugin_entry_v1
# Environment (from CMake): ASIOSMTPD_BUILD_DIR, ASIOSMTPD_WORK_DIR.
set -euo pipefail
step=$1; shift
build=${ASIOSMTPD_BUILD_DIR:?}
work=${ASIOSMTPD_WORK_DIR:?}
prefix=$work/prefix

fail() { echo "FAIL: $*" >&2; exit 1; }
need() { for f in "$@"; do [ -e "$f" ] || fail "missing $f"; done; }

case $step in
install)
  rm -rf "$work"; mkdir -p "$work"
  cmake --install "$build" --prefix "$prefix" >"$work/install.log"
  need "$prefix/bin/asiosmtpd" \
       "$prefix"/lib/asiosmtpd/plugins/{sink,debugging,ping}.so \
       "$prefix"/include/asiosmtpd/{plugin.h,plugin.hpp,reply_rules.hpp,worker_pool.hpp,testkit.hpp,testkit_core.hpp} \
       "$prefix/lib/libasiosmtpd_core.a" \
       "$prefix"/lib/cmake/asiosmtpd-sdk/{asiosmtpd-sdkConfig.cmake,asiosmtpd-sdkConfigVersion.cmake,asiosmtpd-sdk-targets.cmake,AsiosmtpdPlugin.cmake,plugin.map} \
       "$prefix/lib/pkgconfig/asiosmtpd-sdk.pc" \
       "$prefix/etc/asiosmtpd/asiosmtpd.yaml" \
       "$prefix/lib/systemd/system/asiosmtpd.service" \
       "$prefix/share/doc/asiosmtpd-dev/plugin-guide.md" \
       "$prefix/share/asiosmtpd-sdk/examples/hello_c/hello.c"
  # The installed server validates the installed config, finding `debugging` by name.
  "$prefix/bin/asiosmtpd" --check-config --config "$prefix/etc/asiosmtpd/asiosmtpd.yaml"
  echo "installed into $prefix"
  ;;
cmake_examples)
  out=$work/cmake; rm -rf "$out"
  # A sanitized build tree installs a sanitized libasiosmtpd_core.a: its users need the same.
  san=${ASIOSMTPD_SANITIZE:+-fsanitize=$ASIOSMTPD_SANITIZE}
  for ex in hello_c async_policy; do
    # Only the installed prefix: no path into the source or build tree.
    cmake -S "$prefix/share/asiosmtpd-sdk/examples/$ex" -B "$out/$ex" -G Ninja \
      -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Debug \
      -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" -DCMAKE_CXX_FLAGS="-Wall -Wextra -Werror $san" \
      -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san" >"$out.$ex.log"
    cmake --build "$out/$ex" >>"$out.$ex.log" || { cat "$out.$ex.log"; fail "building $ex"; }
  done
  need "$out/hello_c/hello.so" "$out/async_policy/async_policy.so"
  ctest --test-dir "$out/async_policy" --output-on-failure
  # SameMajorVersion: a request for SDK 2 must not find this 1.x package.
  mkdir -p "$out/v2"
  printf 'cmake_minimum_required(VERSION 3.25)\nproject(v2 NONE)\nfind_package(asiosmtpd-sdk 2 QUIET)\nif(asiosmtpd-sdk_FOUND)\n  message(FATAL_ERROR "SDK 1.x accepted for 2")\nendif()\n' >"$out/v2/CMakeLists.txt"
  cmake -S "$out/v2" -B "$out/v2/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  ;;
pkgconfig_examples)
  out=$work/pkgconfig; rm -rf "$out"; mkdir -p "$out"
  cp -r "$prefix/share/asiosmtpd-sdk/examples/hello_c" "$prefix/share/asiosmtpd-sdk/examples/async_policy" "$out/"
  export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
  pkg-config --exists --print-errors 'asiosmtpd-sdk >= 1.0'
  make -s -C "$out/hello_c" CFLAGS="-O2 -Wall -Wextra -Werror -std=c99 -pedantic"
  make -s -C "$out/async_policy" CXXFLAGS="-O2 -Wall -Wextra -Werror -std=c++17"
  need "$out/hello_c/hello.so" "$out/async_policy/async_policy.so"
  bash "$0" exports "$out/hello_c/hello.so" "$out/async_policy/async_policy.so"
  # The unit test, linked with pkg-config's testkit_libs (GoogleTest from Debian's libgtest-dev).
  if [ -e /usr/include/gtest/gtest.h ]; then
    san=${ASIOSMTPD_SANITIZE:+-fsanitize=$ASIOSMTPD_SANITIZE}
    make -s -C "$out/async_policy" check CXXFLAGS="-O2 -Wall -Wextra -Werror -std=c++17 $san" LDFLAGS="$san"
  fi
  ;;
deb)
  out=$work/deb; rm -rf "$out"
  (cd "$build" && cpack -G DEB -B "$out" >"$work/cpack.log") || { cat "$work/cpack.log"; fail cpack; }
  server=$(ls "$out"/asiosmtpd_*_*.deb); dev=$(ls "$out"/asiosmtpd-dev_*_*.deb)
  contents() { dpkg-deb -c "$1" | awk '{print $6}'; }
  for f in ./usr/bin/asiosmtpd ./usr/lib/asiosmtpd/plugins/sink.so ./usr/lib/asiosmtpd/plugins/debugging.so \
           ./usr/lib/asiosmtpd/plugins/ping.so ./etc/asiosmtpd/asiosmtpd.yaml \
           ./usr/lib/systemd/system/asiosmtpd.service ./usr/share/doc/asiosmtpd/README.md \
           ./usr/share/doc/asiosmtpd/copyright ./usr/share/doc/asiosmtpd/LICENSE; do
    contents "$server" | grep -qx "$f" || fail "$server lacks $f"
  done
  for f in ./usr/include/asiosmtpd/plugin.h ./usr/include/asiosmtpd/plugin.hpp ./usr/include/asiosmtpd/testkit.hpp \
           ./usr/include/asiosmtpd/testkit_core.hpp ./usr/lib/libasiosmtpd_core.a \
           ./usr/include/asiosmtpd/reply_rules.hpp ./usr/include/asiosmtpd/worker_pool.hpp \
           ./usr/lib/cmake/asiosmtpd-sdk/asiosmtpd-sdkConfig.cmake ./usr/lib/cmake/asiosmtpd-sdk/AsiosmtpdPlugin.cmake \
           ./usr/lib/pkgconfig/asiosmtpd-sdk.pc ./usr/share/doc/asiosmtpd-dev/plugin-guide.md \
           ./usr/share/doc/asiosmtpd-dev/copyright ./usr/share/doc/asiosmtpd-dev/LICENSE \
           ./usr/share/asiosmtpd-sdk/examples/async_policy/async_policy.cpp; do
    contents "$dev" | grep -qx "$f" || fail "$dev lacks $f"
  done
  # Nothing of the SDK in the server package and no shared objects in the SDK package (the
  # test kit's core is a static library).
  contents "$server" | grep -q '/include/' && fail "$server ships headers"
  contents "$server" | grep -q '\.a$' && fail "$server ships static libraries"
  contents "$dev" | grep -q '\.so$' && fail "$dev ships shared objects"
  [ "$(dpkg-deb -f "$server" Package)" = asiosmtpd ] || fail "server package name"
  [ "$(dpkg-deb -f "$dev" Package)" = asiosmtpd-dev ] || fail "dev package name"
  depends=$(dpkg-deb -f "$server" Depends)
  for lib in libc6 libstdc++6 libyaml-cpp0.7 libfmt9 libssl3; do
    grep -q "\b$lib\b" <<<"$depends" || fail "asiosmtpd Depends lacks $lib: $depends"
  done
  dpkg-deb --ctrl-tarfile "$server" | tar -xO ./conffiles | grep -qx /etc/asiosmtpd/asiosmtpd.yaml \
    || fail "the config is not a conffile"
  echo "$(basename "$server"): Depends: $depends"
  echo "$(basename "$dev"): Depends: $(dpkg-deb -f "$dev" Depends)"
  ;;
exports)
  for so in "$@"; do
    syms=$(nm -D --defined-only "$so" | awk '{print $3}')
    [ "$syms" = asiosmtpd_plugin_entry_v1 ] || fail "$so exports: $(echo $syms)"
  done
  echo "only asiosmtpd_plugin_entry_v1 exported by: $*"
  ;;
*) fail "unknown step $step" ;;
esac
