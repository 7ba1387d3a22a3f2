// SPDX-License-Identifier: Apache-2.0
// The log line formats (log/log.hpp render()): text with and without an RFC 3339 timestamp,
// the journal's "<N>" priorities, and JSON (key=value words as fields, quoted values, the
// other words as "msg", repeated keys, characters JSON must escape).
#include "log/log.hpp"

#include <gtest/gtest.h>

#include <chrono>

namespace asiosmtpd::log {
namespace {

// 2026-12-07T19:30:00.123Z
const auto when = std::chrono::system_clock::time_point(std::chrono::milliseconds(1796671800123LL));

TEST(log_render, text_with_and_without_a_timestamp)
{
    EXPECT_EQ(render(level::info, "event=x a=1", when, format::text, true, false),
              "2026-12-07T19:30:00.123Z info event=x a=1\n");
    EXPECT_EQ(render(level::warn, "event=x", when, format::text, false, false), "warn event=x\n");
}

TEST(log_render, journal_priorities)
{
    EXPECT_EQ(render(level::debug, "e", when, format::text, false, true), "<7>debug e\n");
    EXPECT_EQ(render(level::info, "e", when, format::text, false, true), "<6>info e\n");
    EXPECT_EQ(render(level::warn, "e", when, format::text, false, true), "<4>warn e\n");
    EXPECT_EQ(render(level::error, "e", when, format::text, false, true), "<3>error e\n");
}

TEST(log_render, json_fields_and_message)
{
    EXPECT_EQ(render(level::info,
                     "session=3 event=auth result=failed client=192.0.2.7 mechanism=PLAIN login=\"mal lory\"", when,
                     format::json, true, false),
              "{\"time\":\"2026-12-07T19:30:00.123Z\",\"level\":\"info\",\"session\":\"3\",\"event\":\"auth\","
              "\"result\":\"failed\",\"client\":\"192.0.2.7\",\"mechanism\":\"PLAIN\",\"login\":\"mal lory\"}\n");
    // A plugin's free text: the words that are no key=value make the message.
    EXPECT_EQ(
        render(level::info, "session=1 plugin=proxy upstream said: 250 ok id=7 id=8", when, format::json, false, true),
        "<6>{\"level\":\"info\",\"session\":\"1\",\"plugin\":\"proxy\",\"id\":\"7\",\"id_2\":\"8\","
        "\"msg\":\"upstream said: 250 ok\"}\n");
    EXPECT_EQ(
        render(level::error, "reason=\"a \\x22quoted\\x22 back\\\\slash\" tab=\t", when, format::json, false, false),
        "{\"level\":\"error\",\"reason\":\"a \\\\x22quoted\\\\x22 back\\\\\\\\slash\",\"tab\":\"\\u0009\"}\n");
}

}  // namespace
}  // namespace asiosmtpd::log
