# SPDX-License-Identifier: Apache-2.0
# Warnings live on an INTERFACE target linked PRIVATE to our own targets, never on the
# exported SDK target, so consumers are not forced onto them.
add_library(asiosmtpd_warnings INTERFACE)
target_compile_options(asiosmtpd_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion
  -Wimplicit-fallthrough -Wformat=2
  $<$<COMPILE_LANGUAGE:CXX>:-Wold-style-cast -Wnon-virtual-dtor -Woverloaded-virtual>)
if(ASIOSMTPD_WERROR)
  target_compile_options(asiosmtpd_warnings INTERFACE -Werror)
endif()
