// SPDX-License-Identifier: Apache-2.0
// The mbox plugin streaming its messages (ABI 1.2 DATA_CHUNK) through the SDK test kit: the
// same mbox bytes as the whole-message path for every cut of the message (">From " lines at
// the cuts included), the spool invisible in the folder, and an mbox left untouched by a
// transaction that ends without DATA (a refused piece, a session closed mid-message), and
// whole messages from a host without DATA_CHUNK.
#include "common/delivery_common.hpp"
#include "abi11_host.hpp"
#include "file_helpers.hpp"

#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <dlfcn.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
namespace ap = asiosmtpd::plugins;

using asiosmtpd::test::list;
using asiosmtpd::test::slurp;
using asiosmtpd::test::temp_dir;

const std::string mbox_so = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/mbox.so";

// What the plugin adds for send_mail("a@b.example", {"c@d.example"}) from 192.0.2.1:40000.
const std::string x_headers = "X-Peer: ('192.0.2.1', 40000)\nX-MailFrom: a@b.example\nX-RcptTo: c@d.example\n";

const std::vector<std::string> crafted = {
    "Subject: hi\r\n\r\nFrom me\r\n>From you\r\n>>From x\r\nFrom",
    "From someone\r\nSubject: x\r\n\r\nFrom me\r\n>From you\r\n>>From x",
    "Subject: n\r\n\r\nFrom no line end",
    "Subject: cr\r\n\r\nFrom a\rFrom b\nFrom c\r\n\r\r\n",
    "",
    "Subject: only\r\n",
    "Subject: x\r\n\r\nFro\r\nFrom\r\n From x\r\n>From\r\n",
};

// Over 200 KiB of lines, many of them "From " and ">From " lines, so that some fall on the cuts.
std::string from_heavy_message(std::size_t size)
{
    std::string m = "Subject: quoting\r\nFrom: a@b.example\r\n\r\n";
    for (std::uint32_t i = 0; m.size() < size; ++i) {
        const std::string quote(i % 4, '>');
        m += quote + (i % 3 ? "From " : "Fro") + std::string(i % 97, 'a' + static_cast<char>(i % 26)) + "\r\n";
        if (i % 5 == 0) m += "plain line " + std::to_string(i) + "\r\n";
    }
    return m;
}

// The mbox's bytes, emptied afterwards (so each message is compared alone); the "From " line
// checked and dropped (its date is the time of delivery).
std::string take_appended(const std::string& file)
{
    std::string data = slurp(file);
    const std::string prefix = "From a@b.example ";
    const std::size_t eol = data.find('\n');
    if (data.rfind(prefix, 0) != 0 || eol == std::string::npos) return "<no From line: " + data.substr(0, 80) + ">";
    std::FILE* f = std::fopen(file.c_str(), "w");
    if (f) std::fclose(f);
    return data.substr(eol + 1);
}

std::string expected(const std::string& m) { return ap::prepare_message(m, x_headers, true) + "\n"; }

// A DATA hook without DATA_CHUNK, before mbox: the host then hands every DATA hook the whole
// message, and mbox takes its whole-message path.
asiosmtpd_verdict whole_data(void*, asiosmtpd_call*, const void*) { return ASIOSMTPD_CONTINUE; }
bool refuse_pieces = false;
std::size_t pieces_seen = 0;
asiosmtpd_verdict refusing_chunk(void*, asiosmtpd_call*, const void*)
{
    return ++pieces_seen == 3 && refuse_pieces ? ASIOSMTPD_REJECT : ASIOSMTPD_CONTINUE;
}
bool probe_takes_pieces = false;

asiosmtpd_status probe_create(const asiosmtpd_host_api* api, asiosmtpd_ctx*, asiosmtpd_registrar* reg, void** out,
                              asiosmtpd_errbuf*)
{
    if (probe_takes_pieces) api->register_hook(reg, ASIOSMTPD_HOOK_DATA_CHUNK, &refusing_chunk);
    else api->register_hook(reg, ASIOSMTPD_HOOK_DATA, &whole_data);
    *out = &pieces_seen;
    return ASIOSMTPD_OK;
}

void probe_destroy(void*) {}

const asiosmtpd_plugin_descriptor* probe_entry()
{
    static const asiosmtpd_plugin_descriptor d = {
        sizeof d, ASIOSMTPD_ABI_MAJOR, 2, 0, "probe", "1.0", "mbox probe", &probe_create, &probe_destroy};
    return &d;
}

TEST(mbox_streaming, same_bytes_as_the_whole_message_path_for_every_piece_size)
{
    temp_dir t;
    const std::string file = t.path + "/mbox";
    std::vector<std::string> messages = crafted;
    messages.push_back(from_heavy_message(300 * 1024));
    // The whole-message path first: what streaming must reproduce.
    std::vector<std::string> whole;
    {
        probe_takes_pieces = false;
        tk::host h;
        h.data_chunk_size = 100;
        h.add(&probe_entry);
        h.load(mbox_so, tk::node::map({{"path", file}}));
        auto s = h.open("192.0.2.1", 40000);
        for (const std::string& m : messages) {
            ASSERT_EQ(s.send_mail("a@b.example", {"c@d.example"}, m), "250 OK");
            whole.push_back(take_appended(file));
            EXPECT_EQ(whole.back(), expected(m)) << m;
        }
    }
    for (const std::size_t piece :
         {std::size_t{1}, std::size_t{2}, std::size_t{5}, std::size_t{7}, std::size_t{1000}, std::size_t{64 * 1024}}) {
        tk::host h;
        h.data_chunk_size = piece;
        h.load(mbox_so, tk::node::map({{"path", file}, {"workers", 2}}));
        ASSERT_EQ(h.hook_count(ASIOSMTPD_HOOK_DATA_CHUNK), 1u);
        auto s = h.open("192.0.2.1", 40000);
        for (std::size_t i = 0; i < messages.size(); ++i) {
            if (piece < 1000 && messages[i].size() > 4096) continue;  // 300 KiB a byte at a time: slow, and nothing new
            ASSERT_EQ(s.send_mail("a@b.example", {"c@d.example"}, messages[i]), "250 OK") << "piece=" << piece;
            EXPECT_EQ(take_appended(file), whole[i]) << "piece=" << piece << " message=" << messages[i];
        }
        EXPECT_EQ(list(t.path), std::vector<std::string>{file});  // the spool has no name
    }
}

TEST(mbox_streaming, a_piece_refused_later_in_the_chain_leaves_the_mbox_untouched)
{
    temp_dir t;
    const std::string file = t.path + "/mbox";
    probe_takes_pieces = true;
    refuse_pieces = true;
    pieces_seen = 0;
    tk::host h;
    h.data_chunk_size = 1024;
    h.load(mbox_so, tk::node::map({{"path", file}}));
    h.add(&probe_entry);  // after mbox: the third piece was spooled, then refused
    auto s = h.open("192.0.2.1", 40000);
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, from_heavy_message(10 * 1024)), "550 5.7.1 Rejected");
    EXPECT_EQ(pieces_seen, 3u);
    EXPECT_EQ(slurp(file), "");
    refuse_pieces = false;
    const std::string m = "Subject: x\r\n\r\nFrom y\r\n";
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, m), "250 OK");
    EXPECT_EQ(take_appended(file), expected(m));
    EXPECT_EQ(list(t.path), std::vector<std::string>{file});
}

// BODY=BINARYMIME (RFC 3030): an mbox cannot hold it; refused at MAIL, and the session goes on
// (the refusal at the first piece: tests/integration/test_binarymime.py).
TEST(mbox_streaming, a_binary_message_is_refused_never_stored)
{
    temp_dir t;
    const std::string file = t.path + "/mbox";
    tk::host h;
    h.enable_chunking = true;
    h.load(mbox_so, tk::node::map({{"path", file}}));
    auto s = h.open("192.0.2.1", 40000);
    ASSERT_EQ(s.cmd("EHLO client.example").substr(0, 3), "250");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example> BODY=BINARYMIME"),
              "555 5.6.3 BODY=BINARYMIME not supported: an mbox file cannot hold a binary message");
    EXPECT_EQ(slurp(file), "");
    const std::string m = "Subject: x\r\n\r\nFrom y\r\n";
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, m), "250 OK");
    EXPECT_EQ(take_appended(file), expected(m));
}

TEST(mbox_streaming, a_session_closed_before_data_ends_leaves_the_mbox_untouched)
{
    temp_dir t;
    const std::string file = t.path + "/mbox";
    tk::host h;
    h.load(mbox_so, tk::node::map({{"path", file}}));
    auto s = h.open("192.0.2.1", 40000);
    EXPECT_EQ(s.cmd("EHLO c.example").substr(0, 4), "250-");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<c@d.example>"), "250 OK");
    // The first piece of a message whose client then goes away (pieces by hand).
    const std::string piece = "Subject: x\r\n\r\n" + std::string(4096, 'x') + "\r\nFrom y\r\n";
    asiosmtpd_data_args a{};
    a.struct_size = sizeof a;
    a.content = reinterpret_cast<const std::uint8_t*>(piece.data());
    a.size = piece.size();
    a.flags = ASIOSMTPD_DATA_DOT_UNSTUFFED | ASIOSMTPD_DATA_CRLF;
    a.message_size = piece.size();
    EXPECT_EQ(s.run(ASIOSMTPD_HOOK_DATA_CHUNK, &a).verdict, ASIOSMTPD_CONTINUE);
    EXPECT_EQ(s.cmd("RSET"), "250 OK");  // the transaction ends: its spool closes
    s.close();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(slurp(file), "");
    EXPECT_EQ(list(t.path), std::vector<std::string>{file});
}

// ---- a host without DATA_CHUNK (ABI 1.0/1.1): the table refuses the hook ------------------

TEST(mbox_streaming, a_host_without_data_chunk_gets_whole_messages)
{
    temp_dir t;
    const std::string file = t.path + "/mbox";
    asiosmtpd::test::library lib(mbox_so);  // outlives the host, which destroys the instance first
    ASSERT_NE(lib.handle, nullptr) << ::dlerror();
    ASSERT_TRUE(asiosmtpd::test::abi11::load(lib));
    tk::host h;
    h.data_chunk_size = 100;
    h.add(&asiosmtpd::test::abi11::entry, tk::node::map({{"path", file}}));
    EXPECT_EQ(h.hook_count(ASIOSMTPD_HOOK_DATA_CHUNK), 0u);
    EXPECT_TRUE(h.logged("each message is taken whole"));
    auto s = h.open("192.0.2.1", 40000);
    for (const std::string& m : crafted) {
        ASSERT_EQ(s.send_mail("a@b.example", {"c@d.example"}, m), "250 OK");
        EXPECT_EQ(take_appended(file), expected(m)) << m;
    }
}

}  // namespace
