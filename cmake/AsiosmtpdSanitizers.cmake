# SPDX-License-Identifier: Apache-2.0
# ASIOSMTPD_SANITIZE applies to everything built in this tree, plugins included, so that a
# plugin loaded into a sanitized host is sanitized too.
if(ASIOSMTPD_SANITIZE)
  add_compile_options(-fsanitize=${ASIOSMTPD_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${ASIOSMTPD_SANITIZE})
  if(ASIOSMTPD_SANITIZE MATCHES "thread" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC warns that TSan cannot see atomic_thread_fence (Asio uses it); not our code.
    add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-Wno-tsan>)
  endif()
endif()
# ASIOSMTPD_FUZZ (the fuzz preset, clang): coverage instrumentation for libFuzzer everywhere; the
# fuzz targets themselves link -fsanitize=fuzzer (tests/fuzz/CMakeLists.txt).
if(ASIOSMTPD_FUZZ)
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()
