// SPDX-License-Identifier: Apache-2.0
// The framed protocol between the server and a plugin's child process (isolation/wire.hpp),
// and an isolated plugin through the loader: a generation as in process.
#include "plugin/isolation/wire.hpp"
#include "plugin/loader.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

namespace wire = asiosmtpd::plugin::wire;

TEST(Wire, FieldsRoundTrip)
{
    wire::writer w(wire::call);
    w.u8(7).u16(0xbeef).u32(0xdeadbeef).u64(0x0123456789abcdefULL).i32(-5).str("hello").str({});
    const std::string frame = w.finish();
    ASSERT_EQ(frame.size() - 4, static_cast<std::size_t>(static_cast<unsigned char>(frame[0]) |
                                                         (static_cast<unsigned char>(frame[1]) << 8)));
    wire::framer f;
    f.feed(frame.data(), frame.size());
    std::string body;
    ASSERT_TRUE(f.next(body));
    EXPECT_EQ(static_cast<std::uint8_t>(body[0]), wire::call);
    wire::reader r(std::string_view(body).substr(1));
    EXPECT_EQ(r.u8(), 7);
    EXPECT_EQ(r.u16(), 0xbeef);
    EXPECT_EQ(r.u32(), 0xdeadbeefu);
    EXPECT_EQ(r.u64(), 0x0123456789abcdefULL);
    EXPECT_EQ(r.i32(), -5);
    EXPECT_EQ(r.str(), "hello");
    EXPECT_EQ(r.str(), "");
    EXPECT_TRUE(r.ok());
    EXPECT_EQ(r.u8(), 0);  // past the end: zero, and the frame is refused
    EXPECT_FALSE(r.ok());
    EXPECT_FALSE(f.next(body));
}

TEST(Wire, FramesArriveInPieces)
{
    std::string stream;
    for (int i = 0; i < 3; ++i) stream += wire::writer(wire::result).u32(static_cast<std::uint32_t>(i)).finish();
    wire::framer f;
    std::string body;
    std::vector<std::uint32_t> got;
    for (const char c : stream) {  // one byte at a time
        f.feed(&c, 1);
        while (f.next(body)) got.push_back(wire::reader(std::string_view(body).substr(1)).u32());
    }
    EXPECT_EQ(got, (std::vector<std::uint32_t>{0, 1, 2}));
    EXPECT_FALSE(f.broken());
}

TEST(Wire, BrokenPeerIsRefused)
{
    // A string longer than the frame, a count that cannot fit, a frame of length 0 or over the limit.
    const std::string body = wire::writer(wire::log).u32(1000).str("x").finish().substr(5);
    wire::reader r(body);
    EXPECT_EQ(r.str(), "");
    EXPECT_FALSE(r.ok());
    const std::string huge = wire::writer(wire::log).u32(1u << 30).finish().substr(5);  // outlives the reader
    wire::reader c(huge);
    EXPECT_EQ(c.count(4), 0u);
    EXPECT_FALSE(c.ok());
    for (const std::uint32_t n : {0u, wire::max_frame + 1}) {
        wire::framer f;
        const char len[4] = {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
                             static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 24) & 0xff)};
        f.feed(len, 4);
        std::string out;
        EXPECT_FALSE(f.next(out));
        EXPECT_TRUE(f.broken());
    }
}

TEST(IsolatedLoad, RegistrationsAsInProcess)
{
    namespace cfg = asiosmtpd::config;
    const auto load = [](const char* isolation) {
        const cfg::settings s = cfg::parse(std::string("plugin_path: [") + ASIOSMTPD_BUILD_PLUGIN_DIR +
                                               "]\nplugins:\n  - name: ping\n    isolation: " + isolation + "\n",
                                           "test.yaml", ".");
        return asiosmtpd::plugin::load(s);
    };
    const auto in_process = load("none");
    const auto isolated = load("process");
    ASSERT_EQ(isolated->instances.size(), 1u);
    EXPECT_EQ(isolated->instances[0]->name, in_process->instances[0]->name);
    ASSERT_EQ(isolated->commands.size(), in_process->commands.size());
    EXPECT_EQ(isolated->commands[0].verb, in_process->commands[0].verb);
    EXPECT_EQ(isolated->commands[0].help, in_process->commands[0].help);
    EXPECT_EQ(isolated->ehlo_keywords, in_process->ehlo_keywords);
    // The adapter adds SESSION_CLOSE (the child frees the session's slots then).
    EXPECT_FALSE(isolated->hooks[ASIOSMTPD_HOOK_SESSION_CLOSE].empty());
}
