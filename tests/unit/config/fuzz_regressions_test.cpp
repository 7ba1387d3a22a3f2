// SPDX-License-Identifier: Apache-2.0
// Inputs found by tests/fuzz/config_fuzz that once misbehaved; each must end in config_error.
#include "config/config.hpp"

#include <gtest/gtest.h>

#include <string>

namespace asiosmtpd::config {
namespace {

// yaml-cpp 0.7's LoadAll returned empty documents forever for a stray top-level ',' and the
// loader ran out of memory (--check-config on a 1-byte file ate all RAM).
TEST(config_fuzz_regressions, lone_comma_is_an_error_not_endless_documents)
{
    EXPECT_THROW(parse(",", "f.yaml", "/"), config_error);
    EXPECT_THROW(parse(",s+", "f.yaml", "/"), config_error);
    EXPECT_THROW(parse("# comment\n,\n", "f.yaml", "/"), config_error);
}

TEST(config_fuzz_regressions, two_documents_still_name_the_second)
{
    try {
        parse("server: {}\n---\nserver: {}\n", "f.yaml", "/");
        FAIL() << "no error";
    } catch (const config_error& e) {
        EXPECT_STREQ(e.what(), "f.yaml:3: invalid YAML: more than one document");
    }
}

// yaml-cpp names the bad character of an unknown escape; a newline (or any control byte) there made
// the error two lines (or put raw control bytes on the terminal).
TEST(config_fuzz_regressions, yaml_error_with_a_control_character_stays_one_line)
{
    try {
        parse("server:\n  hostname: \"a\\\x01\"\n", "f.yaml", "/");
        FAIL() << "no error";
    } catch (const config_error& e) {
        EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
        EXPECT_STREQ(e.what(), "f.yaml:2: invalid YAML: unknown escape character: \\x01 (column 17)");
    }
}

// An unknown key is named in the error as it was written; a newline in it made two lines.
TEST(config_fuzz_regressions, unknown_key_with_a_newline_stays_one_line)
{
    try {
        parse("server:\n  \"liste\\n\": 1\n", "f.yaml", "/");
        FAIL() << "no error";
    } catch (const config_error& e) {
        EXPECT_STREQ(e.what(), "f.yaml:2: server.liste\\x0a: unknown key (did you mean 'listen'?)");
    }
}

}  // namespace
}  // namespace asiosmtpd::config
