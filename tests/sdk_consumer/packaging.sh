#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Steps of the packaging tests (tests/sdk_consumer/CMakeLists.txt runs each as a ctest test).
#   install             cmake --install the build tree into $WORK/prefix, check the layout
#   cmake_examples      build sdk/examples (as installed) with find_package(asiosmtpd-sdk),
#                       run the example's own test-kit unit test
#   pkgconfig_examples  build the same examples with pkg-config and make, run the unit test
#   sdk_only            cmake --install --component dev (the SDK alone, as packaging/README.md
#                       says): the SDK's files and nothing of the server; hello_c builds with it
#   deb                 cpack -G DEB; check contents, control fields, dependencies, scripts
#   lintian             lintian on both .deb files (skipped, 77, without lintian)
#   scripts             the maintainer scripts parse (sh -n; shellcheck where installed)
#   manpages            the generated man pages render without a warning (man, groff), list
#                       every key of docs/configuration.md and every option of --help
#   exports FILE...     nm -D: each plugin exports exactly asiosmtpd_plugin_entry_v1
# (packaging.deb_install, test_deb_install.py, installs the .deb files and runs the server.)
# Environment (from CMake): ASIOSMTPD_BUILD_DIR, ASIOSMTPD_WORK_DIR.
set -euo pipefail
step=$1; shift
build=${ASIOSMTPD_BUILD_DIR:?}
work=${ASIOSMTPD_WORK_DIR:?}
prefix=$work/prefix

fail() { echo "FAIL: $*" >&2; exit 1; }
need() { for f in "$@"; do [ -e "$f" ] || fail "missing $f"; done; }
# The bundled plugins, as the build made them: every one must be installed and packaged.
plugins=$(cd "$build/plugins" && ls -- *.so | sed 's/\.so$//')
for p in sink debugging ping authfile maildir mbox proxy policy milter access; do
  grep -qx "$p" <<<"$plugins" || fail "the build has no $p plugin"
done
scripts=$ASIOSMTPD_SOURCE_DIR/packaging/debian
man=$build/packaging/man

case $step in
install)
  rm -rf "$work"; mkdir -p "$work"
  cmake --install "$build" --prefix "$prefix" >"$work/install.log"
  for p in $plugins; do need "$prefix/lib/asiosmtpd/plugins/$p.so" "$prefix/share/doc/asiosmtpd/plugins/$p.md"; done
  need "$prefix/bin/asiosmtpd" \
       "$prefix"/share/man/man8/asiosmtpd.8.gz "$prefix"/share/man/man5/asiosmtpd.yaml.5.gz \
       "$prefix"/include/asiosmtpd/{plugin.h,plugin.hpp,reply_rules.hpp,worker_pool.hpp,dsn.hpp,testkit.hpp,testkit_core.hpp} \
       "$prefix/lib/libasiosmtpd_core.a" \
       "$prefix"/lib/cmake/asiosmtpd-sdk/{asiosmtpd-sdkConfig.cmake,asiosmtpd-sdkConfigVersion.cmake,asiosmtpd-sdk-targets.cmake,AsiosmtpdPlugin.cmake,plugin.map} \
       "$prefix/lib/pkgconfig/asiosmtpd-sdk.pc" \
       "$prefix/etc/asiosmtpd/asiosmtpd.yaml" \
       "$prefix/lib/systemd/system/asiosmtpd.service" \
       "$prefix/share/doc/asiosmtpd-dev/plugin-guide.md" \
       "$prefix/share/asiosmtpd-sdk/examples/hello_c/hello.c"
  # The unit names this prefix's binary and config.
  grep -qx "ExecStart=$prefix/bin/asiosmtpd --config $prefix/etc/asiosmtpd/asiosmtpd.yaml" \
    "$prefix/lib/systemd/system/asiosmtpd.service" || fail "the unit does not name $prefix"
  grep -q '%' "$prefix/lib/systemd/system/asiosmtpd.service" && fail "a placeholder is left in the unit"
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
  # asiosmtpd_add_plugin(INSTALL) puts the plugin where a server of the same prefix looks:
  # <prefix>/lib/asiosmtpd/plugins, also for prefix /usr on Debian (GNUInstallDirs' libdir
  # would be lib/<multiarch> there).
  cmake -S "$prefix/share/asiosmtpd-sdk/examples/hello_c" -B "$out/hello_usr" -G Ninja \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_INSTALL_PREFIX=/usr >"$out.hello_usr.log"
  cmake --build "$out/hello_usr" >>"$out.hello_usr.log"
  DESTDIR="$out/destdir" cmake --install "$out/hello_usr" >>"$out.hello_usr.log"
  need "$out/destdir/usr/lib/asiosmtpd/plugins/hello.so"
  # SameMajorVersion: a request for SDK 2 must not find this 1.x package.
  mkdir -p "$out/v2"
  printf 'cmake_minimum_required(VERSION 3.25)\nproject(v2 NONE)\nfind_package(asiosmtpd-sdk 2 QUIET)\nif(asiosmtpd-sdk_FOUND)\n  message(FATAL_ERROR "SDK 1.x accepted for 2")\nendif()\n' >"$out/v2/CMakeLists.txt"
  cmake -S "$out/v2" -B "$out/v2/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  ;;
sdk_only)
  sdk=$work/sdk_only; rm -rf "$sdk" "$work/sdk_only.build"
  cmake --install "$build" --component dev --prefix "$sdk" >"$work/sdk_only.log"
  need "$sdk"/include/asiosmtpd/{plugin.h,plugin.hpp,testkit.hpp} "$sdk/lib/libasiosmtpd_core.a" \
       "$sdk/lib/cmake/asiosmtpd-sdk/asiosmtpd-sdkConfig.cmake" "$sdk/lib/pkgconfig/asiosmtpd-sdk.pc" \
       "$sdk/share/asiosmtpd-sdk/examples/hello_c/hello.c" "$sdk/share/doc/asiosmtpd-dev/plugin-guide.md"
  for f in bin etc lib/asiosmtpd lib/systemd share/man share/doc/asiosmtpd; do
    [ ! -e "$sdk/$f" ] || fail "the SDK-only install has $f"
  done
  PKG_CONFIG_PATH=$sdk/lib/pkgconfig pkg-config --exists --print-errors 'asiosmtpd-sdk >= 1.0'
  cmake -S "$sdk/share/asiosmtpd-sdk/examples/hello_c" -B "$work/sdk_only.build" -G Ninja \
    -DCMAKE_PREFIX_PATH="$sdk" >>"$work/sdk_only.log"
  cmake --build "$work/sdk_only.build" >>"$work/sdk_only.log" || { cat "$work/sdk_only.log"; fail "hello_c"; }
  need "$work/sdk_only.build/hello.so"
  echo "SDK alone in $sdk: $(cd "$sdk" && find . -type f | wc -l) files, hello_c builds against it"
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
  depends=$(dpkg-deb -f "$server" Depends)
  contents() { dpkg-deb -c "$1" | awk '{print $6}'; }
  for f in ./usr/bin/asiosmtpd ./etc/asiosmtpd/asiosmtpd.yaml \
           ./usr/lib/systemd/system/asiosmtpd.service ./usr/share/doc/asiosmtpd/README.md \
           ./usr/share/doc/asiosmtpd/README.packaging.md ./usr/share/doc/asiosmtpd/configuration.md \
           ./usr/share/man/man8/asiosmtpd.8.gz ./usr/share/man/man5/asiosmtpd.yaml.5.gz \
           ./usr/share/doc/asiosmtpd/copyright ./usr/share/doc/asiosmtpd/LICENSE \
           $(for p in $plugins; do echo "./usr/lib/asiosmtpd/plugins/$p.so ./usr/share/doc/asiosmtpd/plugins/$p.md"; done); do
    contents "$server" | grep -qx "$f" || fail "$server lacks $f"
  done
  # No plugin in the package that the build did not make.
  packaged=$(contents "$server" | sed -n 's|^\./usr/lib/asiosmtpd/plugins/\(.*\)\.so$|\1|p' | sort)
  [ "$packaged" = "$(sort <<<"$plugins")" ] || fail "packaged plugins: $(echo $packaged); built: $(echo $plugins)"
  # The description names every bundled plugin.
  description=$(dpkg-deb -f "$server" Description)
  for p in $plugins; do grep -qw -- "$p" <<<"$description" || fail "the description does not name $p"; done
  # The maintainer scripts, as in packaging/debian, executable.
  for s in postinst prerm postrm; do
    dpkg-deb --ctrl-tarfile "$server" | tar -tv "./$s" | grep -q '^-rwxr-xr-x' || fail "$s is not 0755"
    cmp -s <(dpkg-deb --ctrl-tarfile "$server" | tar -xO "./$s") "$scripts/$s" || fail "$s differs from packaging/debian/$s"
  done
  grep -qw adduser <<<"$depends" || fail "asiosmtpd Depends lacks adduser (postinst uses it): $depends"
  # Debian's changelog in both, its first entry this version.
  version=$(dpkg-deb -f "$server" Version)
  for deb in "$server" "$dev"; do
    pkg=$(dpkg-deb -f "$deb" Package)
    top=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/share/doc/$pkg/changelog.gz" | gzip -dc | head -n1)
    [ "$top" = "asiosmtpd ($version) unstable; urgency=medium" ] \
      || fail "$pkg: changelog.gz starts with '$top', not version $version (packaging/debian/changelog)"
  done
  # Stripped (CPACK_STRIP_FILES), but the test kit's static library keeps its symbols.
  dpkg-deb -x "$server" "$out/server"; dpkg-deb -x "$dev" "$out/dev"
  for f in "$out"/server/usr/bin/asiosmtpd "$out"/server/usr/lib/asiosmtpd/plugins/*.so; do
    file "$f" | grep -q ', stripped' || fail "not stripped: $f"
  done
  [ "$(nm "$out/dev/usr/lib/libasiosmtpd_core.a" 2>/dev/null | grep -c ' T ')" -gt 0 ] || fail "libasiosmtpd_core.a has no symbols"
  for f in ./usr/include/asiosmtpd/plugin.h ./usr/include/asiosmtpd/plugin.hpp ./usr/include/asiosmtpd/testkit.hpp \
           ./usr/include/asiosmtpd/testkit_core.hpp ./usr/lib/libasiosmtpd_core.a \
           ./usr/include/asiosmtpd/reply_rules.hpp ./usr/include/asiosmtpd/worker_pool.hpp ./usr/include/asiosmtpd/dsn.hpp \
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
  for lib in libc6 libstdc++6 libyaml-cpp0.7 libfmt9 libssl3; do
    grep -q "\b$lib\b" <<<"$depends" || fail "asiosmtpd Depends lacks $lib: $depends"
  done
  dpkg-deb --ctrl-tarfile "$server" | tar -xO ./conffiles | grep -qx /etc/asiosmtpd/asiosmtpd.yaml \
    || fail "the config is not a conffile"
  echo "$(basename "$server"): Depends: $depends"
  echo "$(basename "$dev"): Depends: $(dpkg-deb -f "$dev" Depends)"
  ;;
lintian)
  command -v lintian >/dev/null || { echo "lintian not installed (apt-get install lintian): skipped"; exit 77; }
  debs=("$work"/deb/asiosmtpd_*_*.deb "$work"/deb/asiosmtpd-dev_*_*.deb)
  need "${debs[@]}"
  # One warning is accepted (packaging/README.md): the SDK's pkg-config file is in
  # /usr/lib/pkgconfig, where a cross pkg-config does not look; plugins are built natively.
  suppress=pkg-config-unavailable-for-cross-compilation
  out=$(lintian --no-cfg --fail-on error,warning --suppress-tags "$suppress" "${debs[@]}" 2>&1) \
    || { echo "$out"; fail "lintian"; }
  echo "$out"
  echo "lintian: no error or warning on $(basename -a "${debs[@]}" | tr '\n' ' ')"
  ;;
scripts)
  for s in postinst prerm postrm; do
    sh -n "$scripts/$s" || fail "$s: sh -n"
    head -n1 "$scripts/$s" | grep -qx '#!/bin/sh' || fail "$s: not a #!/bin/sh script"
  done
  if command -v shellcheck >/dev/null; then
    shellcheck -s sh "$scripts"/{postinst,prerm,postrm} || fail shellcheck
    echo "sh -n and shellcheck: postinst prerm postrm"
  else
    echo "sh -n: postinst prerm postrm (shellcheck not installed)"
  fi
  ;;
manpages)
  need "$man/asiosmtpd.8" "$man/asiosmtpd.yaml.5"
  export LC_ALL=C.UTF-8 MANWIDTH=80
  for page in asiosmtpd.8 asiosmtpd.yaml.5; do
    err=$(groff -man -Tutf8 -ww -z "$man/$page" 2>&1) || fail "groff $page: $err"
    [ -z "$err" ] || fail "groff warns on $page: $err"
    err=$(MANPAGER=cat man --warnings -l "$man/$page.gz" 2>&1 >/dev/null) || fail "man -l $page.gz: $err"
    [ -z "$err" ] || fail "man warns on $page.gz: $err"
  done
  text() { groff -man -Tutf8 -P-cbou "$man/$1" 2>/dev/null; }
  yaml5=$(text asiosmtpd.yaml.5)
  keys=$(sed -n 's/^| `\([^`]*\)` |.*/\1/p' "$ASIOSMTPD_SOURCE_DIR/docs/configuration.md")
  [ "$(wc -l <<<"$keys")" -ge 40 ] || fail "found only $(wc -l <<<"$keys") keys in docs/configuration.md"
  for k in $keys; do grep -qF -- "$k" <<<"$yaml5" || fail "asiosmtpd.yaml(5) lacks the key $k"; done
  page8=$(text asiosmtpd.8)
  options=$("$build/bin/asiosmtpd" --help | grep -oE -- '--[a-z][a-z-]*' | sort -u)
  for o in $options; do grep -qF -- "$o" <<<"$page8" || fail "asiosmtpd(8) lacks the option $o"; done
  grep -q '^NAME' <<<"$page8" && grep -q 'asiosmtpd - ' <<<"$page8" || fail "asiosmtpd(8): no NAME line"
  echo "man pages render without warnings; $(wc -l <<<"$keys") config keys in asiosmtpd.yaml(5); options in asiosmtpd(8): $(echo $options)"
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
