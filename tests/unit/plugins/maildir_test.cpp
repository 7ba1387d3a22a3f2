// SPDX-License-Identifier: Apache-2.0
// The maildir plugin streaming its messages (ABI 1.2 DATA_CHUNK) through the SDK test kit: the
// same file as a whole delivery for every cut of the message, the tmp/ file growing while the
// pieces arrive, nothing left behind when a later plugin refuses a piece, and the whole-message
// paths (a host without DATA_CHUNK; another DATA hook that takes no pieces). First, the
// streaming message_preparer of delivery_common.hpp against prepare_message at every cut.
#include "common/delivery_common.hpp"
#include "abi11_host.hpp"
#include "file_helpers.hpp"

#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
namespace ap = asiosmtpd::plugins;

const std::string maildir_so = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/maildir.so";

// What the plugin appends for send_mail("a@b.example", {"c@d.example"}) from 192.0.2.1:40000.
const std::string x_headers = "X-Peer: ('192.0.2.1', 40000)\nX-MailFrom: a@b.example\nX-RcptTo: c@d.example\n";

// Messages as the host passes them (unstuffed, CRLF), the odd ones included.
const std::vector<std::string> crafted = {
    "Subject: hi\r\nFrom: a@b.example\r\n\r\nhello\r\n",
    "Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n",
    "Subject: caf\xc3\xa9\r\n\r\nbody \xe9\xff\x80 ok\r\n",
    "Subject: nothing below\r\n\r\n",
    "",
    "Subject: only\r\nTo: c@d.example\r\n",
    "Subject: only, no end",
    "just a body line\r\nand another\r\n",
    "Subject: bare\r\n\r\na\rb\nc\r\n\r\r\n\n",
    "Subject: x\r\n\r\nno line end",
    "Subject: a\r\n  folded\r\n\tmore\r\n\r\nbody\r\n",
    " leading continuation\r\nSubject: x\r\n\r\n",
    "From someone\r\nSubject: x\r\n\r\nFrom me\r\n>From you\r\n>>From x",
    "Subject: n\r\n\r\nx\x00y\r\n",
    "Subject: cr\r",
    "Subject: cr\r\r",
    "\r\n\r\nbody after an empty header block\r\n",
    "Bad header line\r\nSubject: late\r\n",
};

// The preparer's output for `content` cut at `cuts` (ascending offsets), with empty pieces
// in between (they must change nothing).
std::string prepared_in_pieces(std::string_view content, const std::vector<std::size_t>& cuts, bool mbox)
{
    ap::message_preparer p(x_headers, mbox);
    std::string out;
    std::size_t at = 0;
    for (const std::size_t cut : cuts) {
        p.feed(content.substr(at, cut - at), out);
        p.feed({}, out);
        at = cut;
    }
    p.feed(content.substr(at), out);
    p.finish(out);
    return out;
}

TEST(message_preparer, matches_prepare_message_wherever_the_message_is_cut)
{
    for (const bool mbox : {false, true}) {
        for (const std::string& content : crafted) {
            const std::string whole = ap::prepare_message(content, x_headers, mbox);
            EXPECT_EQ(prepared_in_pieces(content, {}, mbox), whole) << content;
            for (std::size_t i = 0; i <= content.size(); ++i) {
                for (std::size_t j = i; j <= content.size(); ++j)
                    ASSERT_EQ(prepared_in_pieces(content, {i, j}, mbox), whole)
                        << "mbox=" << mbox << " cuts=" << i << "," << j << " content=" << content;
            }
            std::vector<std::size_t> every;  // one byte at a time
            for (std::size_t i = 1; i < content.size(); ++i) every.push_back(i);
            EXPECT_EQ(prepared_in_pieces(content, every, mbox), whole) << content;
        }
    }
}

// ---- helpers -------------------------------------------------------------------------------

using asiosmtpd::test::list;
using asiosmtpd::test::slurp;
using asiosmtpd::test::temp_dir;

// Removed files go on a worker thread: wait (bounded) until `dir` is empty.
bool empties(const std::string& dir)
{
    for (int i = 0; i < 500 && !list(dir).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return list(dir).empty();
}

// The one file in new/, taken out (so the next message is the only one again).
std::string take_delivered(const std::string& maildir)
{
    const auto files = list(maildir + "/new");
    if (files.size() != 1) return "<" + std::to_string(files.size()) + " files in new/>";
    std::string data = slurp(files[0]);
    ::unlink(files[0].c_str());
    return data;
}

// About `size` bytes of CRLF lines of varied length (some dotted, some with bare CR/LF).
std::string varied_message(std::size_t size)
{
    std::string m = "Subject: big\r\nX-Long: " + std::string(900, 'h') + "\r\n\r\n";
    std::uint32_t x = 293;
    while (m.size() < size) {
        x = x * 1103515245u + 12345u;
        const std::size_t n = (x >> 16) % 300;
        std::string line(n, static_cast<char>('a' + (x >> 8) % 26));
        if (n > 10 && x % 7 == 0) line[n / 2] = (x % 2) ? '\r' : '\n';
        if (x % 5 == 0) line.insert(0, ".");
        m += line + "\r\n";
    }
    return m;
}

// ---- a C-ABI probe plugin, linked into this test, chained before or after maildir ---------

struct probe_state {
    const asiosmtpd_host_api* api = nullptr;
    bool chunk_hook = true;        // register DATA_CHUNK
    bool data_hook = false;        // register DATA (CONTINUE)
    std::size_t refuse_piece = 0;  // answer this piece (1-based) with REJECT
    std::string watch;             // a folder whose files are counted and sized at each piece
    std::size_t pieces = 0;
    std::vector<std::pair<std::size_t, std::uint64_t>> seen;  // (files, bytes) in `watch`
    std::vector<std::uint64_t> received;                      // message_size at each piece
};
probe_state probe;

asiosmtpd_verdict probe_chunk(void*, asiosmtpd_call*, const void* raw)
{
    const auto* args = static_cast<const asiosmtpd_data_args*>(raw);
    ++probe.pieces;
    probe.received.push_back(args->message_size);
    if (!probe.watch.empty()) {
        std::uint64_t bytes = 0;
        const auto files = list(probe.watch);
        for (const auto& f : files) {
            struct stat st {};
            if (::stat(f.c_str(), &st) == 0) bytes += static_cast<std::uint64_t>(st.st_size);
        }
        probe.seen.emplace_back(files.size(), bytes);
    }
    if (probe.pieces == probe.refuse_piece) return ASIOSMTPD_REJECT;
    return ASIOSMTPD_CONTINUE;
}

asiosmtpd_verdict probe_data(void*, asiosmtpd_call*, const void*) { return ASIOSMTPD_CONTINUE; }

asiosmtpd_status probe_create(const asiosmtpd_host_api* api, asiosmtpd_ctx*, asiosmtpd_registrar* reg, void** out,
                              asiosmtpd_errbuf*)
{
    probe.api = api;
    if (probe.chunk_hook) api->register_hook(reg, ASIOSMTPD_HOOK_DATA_CHUNK, &probe_chunk);
    if (probe.data_hook) api->register_hook(reg, ASIOSMTPD_HOOK_DATA, &probe_data);
    *out = &probe;
    return ASIOSMTPD_OK;
}

void probe_destroy(void*) {}

const asiosmtpd_plugin_descriptor* probe_entry()
{
    static const asiosmtpd_plugin_descriptor d = {
        sizeof d, ASIOSMTPD_ABI_MAJOR, 2, 0, "probe", "1.0", "DATA_CHUNK probe", &probe_create, &probe_destroy};
    return &d;
}

// The message as the server receives it from send_mail(): a client ends the last line with
// CRLF before the final dot, so the content of a message always ends with one (or is empty).
std::string as_sent(const std::string& m)
{
    return m.empty() || (m.size() >= 2 && m.compare(m.size() - 2, 2, "\r\n") == 0) ? m : m + "\r\n";
}

void load_maildir(tk::host& h, const std::string& path)
{
    h.load(maildir_so, tk::node::map({{"path", path}, {"workers", 2}}));
}

// ---- streaming through the test kit --------------------------------------------------------

TEST(maildir_streaming, same_file_for_every_piece_size)
{
    temp_dir t;
    const std::string md = t.path + "/Maildir";
    std::vector<std::string> messages = crafted;
    messages.push_back(varied_message(300 * 1024));
    for (const std::size_t piece : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{7}, std::size_t{64},
                                    std::size_t{1000}, std::size_t{64 * 1024}}) {
        tk::host h;
        h.data_chunk_size = piece;
        load_maildir(h, md);
        ASSERT_EQ(h.hook_count(ASIOSMTPD_HOOK_DATA_CHUNK), 1u);
        auto s = h.open("192.0.2.1", 40000);
        for (const std::string& m : messages) {
            if (piece < 64 && m.size() > 4096) continue;  // a 300 KiB message a byte at a time: slow, and nothing new
            ASSERT_EQ(s.send_mail("a@b.example", {"c@d.example"}, m), "250 OK") << "piece=" << piece;
            EXPECT_EQ(take_delivered(md), ap::prepare_message(as_sent(m), x_headers))
                << "piece=" << piece << " message=" << m;
            EXPECT_TRUE(list(md + "/tmp").empty());
        }
    }
}

TEST(maildir_streaming, the_file_grows_in_tmp_while_the_pieces_arrive)
{
    temp_dir t;
    const std::string md = t.path + "/Maildir";
    const std::string m = varied_message(200 * 1024);
    const std::size_t piece = 16 * 1024;
    probe = probe_state{};
    probe.watch = md + "/tmp";
    tk::host h;
    h.data_chunk_size = piece;
    load_maildir(h, md);
    h.add(&probe_entry);  // after maildir: sees each piece once maildir has written it
    auto s = h.open("192.0.2.1", 40000);
    ASSERT_EQ(s.send_mail("a@b.example", {"c@d.example"}, m), "250 OK");
    // The server's pieces: at least data_chunk_size, cut at a line end; the last may be shorter.
    ASSERT_GE(probe.seen.size(), 2u);
    ASSERT_EQ(probe.received.size(), probe.seen.size());
    ASSERT_EQ(probe.received.back(), m.size());
    ap::message_preparer p(x_headers);
    std::string so_far;
    std::uint64_t from = 0;
    for (std::size_t i = 0; i < probe.seen.size(); ++i) {
        const std::uint64_t to = probe.received[i];
        if (i + 1 < probe.seen.size()) {
            EXPECT_GE(to - from, piece) << "piece " << i + 1;
        }
        p.feed(std::string_view(m).substr(from, to - from), so_far);
        from = to;
        EXPECT_EQ(probe.seen[i], (std::pair<std::size_t, std::uint64_t>(1, so_far.size()))) << "piece " << i + 1;
    }
    p.finish(so_far);
    EXPECT_EQ(take_delivered(md), so_far);
    EXPECT_TRUE(list(md + "/tmp").empty());
}

TEST(maildir_streaming, a_piece_refused_later_in_the_chain_leaves_nothing_behind)
{
    temp_dir t;
    const std::string md = t.path + "/Maildir";
    probe = probe_state{};
    probe.refuse_piece = 3;
    probe.watch = md + "/tmp";
    tk::host h;
    h.data_chunk_size = 1024;
    load_maildir(h, md);
    h.add(&probe_entry);
    auto s = h.open("192.0.2.1", 40000);
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, varied_message(10 * 1024)), "550 5.7.1 Rejected");
    ASSERT_EQ(probe.seen.size(), 3u);
    EXPECT_EQ(probe.seen[2].first, 1u);  // the file was there, in tmp/
    EXPECT_TRUE(list(md + "/new").empty());
    EXPECT_TRUE(empties(md + "/tmp"));  // the transaction ended: its file goes
    // The session goes on: the next message is stored.
    probe.refuse_piece = 0;
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: x\r\n\r\ny\r\n"), "250 OK");
    EXPECT_EQ(take_delivered(md), ap::prepare_message("Subject: x\r\n\r\ny\r\n", x_headers));
}

TEST(maildir_streaming, a_session_closed_before_data_ends_leaves_nothing_behind)
{
    temp_dir t;
    const std::string md = t.path + "/Maildir";
    tk::host h;
    h.data_chunk_size = 1024;
    load_maildir(h, md);
    auto s = h.open("192.0.2.1", 40000);
    // The test kit cannot cut a DATA short; a DATA_CHUNK piece run by hand stands for the
    // first piece of a message whose client then goes away.
    EXPECT_EQ(s.cmd("EHLO c.example").substr(0, 4), "250-");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<c@d.example>"), "250 OK");
    const std::string piece(4096, 'x');
    asiosmtpd_data_args a{};
    a.struct_size = sizeof a;
    a.content = reinterpret_cast<const std::uint8_t*>(piece.data());
    a.size = piece.size();
    a.flags = ASIOSMTPD_DATA_DOT_UNSTUFFED | ASIOSMTPD_DATA_CRLF;
    a.message_size = piece.size();
    EXPECT_EQ(s.run(ASIOSMTPD_HOOK_DATA_CHUNK, &a).verdict, ASIOSMTPD_CONTINUE);
    EXPECT_EQ(list(md + "/tmp").size(), 1u);
    s.close();
    EXPECT_TRUE(empties(md + "/tmp"));
    EXPECT_TRUE(list(md + "/new").empty());
}

TEST(maildir_streaming, whole_message_when_another_data_hook_takes_no_pieces)
{
    temp_dir t;
    const std::string md = t.path + "/Maildir";
    probe = probe_state{};
    probe.chunk_hook = false;
    probe.data_hook = true;  // DATA without DATA_CHUNK: every DATA hook gets the whole message
    tk::host h;
    h.data_chunk_size = 100;
    h.add(&probe_entry);
    load_maildir(h, md);
    auto s = h.open("192.0.2.1", 40000);
    for (const std::string& m : crafted) {
        ASSERT_EQ(s.send_mail("a@b.example", {"c@d.example"}, m), "250 OK");
        EXPECT_EQ(take_delivered(md), ap::prepare_message(as_sent(m), x_headers)) << m;
    }
    EXPECT_TRUE(list(md + "/tmp").empty());
}

TEST(maildir_streaming, a_gap_in_the_pieces_answers_451)
{
    // The host hands every piece to every plugin that takes pieces; should one go missing all
    // the same, the file would lack it: 451 rather than a damaged message. Pieces by hand.
    temp_dir t;
    const std::string md = t.path + "/Maildir";
    tk::host h;
    load_maildir(h, md);
    auto s = h.open("192.0.2.1", 40000);
    EXPECT_EQ(s.cmd("EHLO c.example").substr(0, 4), "250-");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<c@d.example>"), "250 OK");
    const std::string piece = "Subject: x\r\n\r\n" + std::string(1000, 'y') + "\r\n";
    asiosmtpd_data_args a{};
    a.struct_size = sizeof a;
    a.content = reinterpret_cast<const std::uint8_t*>(piece.data());
    a.size = piece.size();
    a.flags = ASIOSMTPD_DATA_DOT_UNSTUFFED | ASIOSMTPD_DATA_CRLF;
    a.message_size = piece.size();
    EXPECT_EQ(s.run(ASIOSMTPD_HOOK_DATA_CHUNK, &a).verdict, ASIOSMTPD_CONTINUE);
    a.message_size = 3 * piece.size();  // the second piece never came
    a.flags |= ASIOSMTPD_DATA_LAST_CHUNK;
    EXPECT_EQ(s.run(ASIOSMTPD_HOOK_DATA_CHUNK, &a).verdict, ASIOSMTPD_CONTINUE);
    asiosmtpd_data_args d{};
    d.struct_size = sizeof d;
    d.flags = ASIOSMTPD_DATA_DOT_UNSTUFFED | ASIOSMTPD_DATA_CRLF | ASIOSMTPD_DATA_STREAMED;
    d.message_size = 3 * piece.size();
    const auto o = s.run(ASIOSMTPD_HOOK_DATA, &d);
    EXPECT_EQ(o.verdict, ASIOSMTPD_TEMPFAIL);
    EXPECT_EQ(o.code, 451);
    EXPECT_TRUE(h.logged("did not all reach this plugin"));
    EXPECT_TRUE(list(md + "/new").empty());
    EXPECT_TRUE(empties(md + "/tmp"));  // the first piece's file went when the gap showed
    s.close();
}

// ---- BODY=BINARYMIME (RFC 3030): byte for byte under CRLF trace headers --------------------

std::string binary_message()
{
    std::string m = "Content-Type: application/octet-stream\r\n\r\n";
    for (int i = 0; i < 3000; ++i) m += static_cast<char>((i * 7 + i / 256) % 256);
    m += "\r\n.\r\nFrom x\rbare\nno line end";
    m += '\0';
    return m;
}

const std::string crlf_headers = "X-Peer: ('192.0.2.1', 40000)\r\nX-MailFrom: a@b.example\r\nX-RcptTo: c@d.example\r\n";

std::string send_binary(tk::session& s, const std::string& m)
{
    if (s.cmd("MAIL FROM:<a@b.example> BODY=BINARYMIME") != "250 OK") return "MAIL refused";
    if (s.cmd("RCPT TO:<c@d.example>") != "250 OK") return "RCPT refused";
    const std::size_t half = m.size() / 2;
    s.send("BDAT " + std::to_string(half) + "\r\n" + m.substr(0, half));
    return s.send("BDAT " + std::to_string(m.size() - half) + " LAST\r\n" + m.substr(half));
}

TEST(maildir_streaming, a_binary_message_is_stored_byte_for_byte)
{
    temp_dir t;
    const std::string md = t.path + "/Maildir";
    const std::string m = binary_message();
    for (const std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{1000}, std::size_t{64 * 1024}}) {
        tk::host h;
        h.enable_chunking = true;
        h.data_chunk_size = piece;
        load_maildir(h, md);
        auto s = h.open("192.0.2.1", 40000);
        ASSERT_EQ(s.cmd("EHLO client.example").substr(0, 3), "250");
        ASSERT_EQ(send_binary(s, m), "250 OK") << "piece=" << piece;
        EXPECT_EQ(take_delivered(md), crlf_headers + m) << "piece=" << piece;
        EXPECT_TRUE(list(md + "/tmp").empty());
    }
}

// ---- a host without DATA_CHUNK (ABI 1.0/1.1): the table refuses the hook ------------------

TEST(maildir_streaming, a_host_without_data_chunk_gets_whole_messages)
{
    temp_dir t;
    const std::string md = t.path + "/Maildir";
    asiosmtpd::test::library lib(maildir_so);  // outlives the host, which destroys the instance first
    ASSERT_NE(lib.handle, nullptr) << ::dlerror();
    ASSERT_TRUE(asiosmtpd::test::abi11::load(lib));
    tk::host h;
    h.data_chunk_size = 100;
    h.add(&asiosmtpd::test::abi11::entry, tk::node::map({{"path", md}}));
    EXPECT_EQ(h.hook_count(ASIOSMTPD_HOOK_DATA_CHUNK), 0u);
    EXPECT_TRUE(h.logged("each message is taken whole"));
    auto s = h.open("192.0.2.1", 40000);
    for (const std::string& m : crafted) {
        ASSERT_EQ(s.send_mail("a@b.example", {"c@d.example"}, m), "250 OK");
        EXPECT_EQ(take_delivered(md), ap::prepare_message(as_sent(m), x_headers)) << m;
    }
    // A binary message whole: as it came, too.
    h.enable_chunking = true;
    ASSERT_EQ(send_binary(s, binary_message()), "250 OK");
    EXPECT_EQ(take_delivered(md), crlf_headers + binary_message());
    EXPECT_TRUE(list(md + "/tmp").empty());
}

}  // namespace
