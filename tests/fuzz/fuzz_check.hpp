// SPDX-License-Identifier: Apache-2.0
// fuzz_check: an invariant check that stays on in every build type (assert() is compiled out
// in release builds). A failure prints what broke and aborts, which libFuzzer reports as a
// crash with the input that caused it.
#pragma once

#include <cstdio>
#include <cstdlib>

#define ASIOSMTPD_FUZZ_CHECK(cond, what)                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            std::fprintf(stderr, "fuzz check failed: %s (%s) at %s:%d\n", what, #cond, __FILE__, __LINE__);            \
            std::abort();                                                                                              \
        }                                                                                                              \
    } while (false)
