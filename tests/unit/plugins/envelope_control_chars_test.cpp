// SPDX-License-Identifier: Apache-2.0
// Control characters in the envelope, the plugins' own defence: what the server refuses on the
// wire (553/501, tests/unit/proto/engine_control_chars_test.cpp) can still reach a plugin from
// an envelope-rewriting plugin or a host without that check, so each plugin that writes the
// envelope into a header or a line must encode or refuse it without help. The envelope is
// swapped under the plugin by rewritten_envelope_host.hpp (the test kit itself refuses such
// addresses, as the server: testkit_control_chars_test.cpp). Also: escape_controls() itself.
#include "common/delivery_common.hpp"
#include "file_helpers.hpp"
#include "rewritten_envelope_host.hpp"

#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
namespace ap = asiosmtpd::plugins;
namespace rw = asiosmtpd::test::rewritten;
using asiosmtpd::test::library;
using asiosmtpd::test::list;
using asiosmtpd::test::slurp;
using asiosmtpd::test::temp_dir;
using namespace std::string_literals;

std::string plugin(const char* name) { return std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/" + name + ".so"; }

// The report's attack: a quoted local part whose CRs would start X-RcptTo and X-Foo headers,
// recipients forging X-Spam-Flag and From with a CR or an LF, and a NUL.
const std::string evil_from = "\"x\rX-RcptTo: ceo@corp.example\rX-Foo: \"@b.example";
const std::vector<std::string> evil_rcpts = {"\"y\rX-Spam-Flag: NO\"@b.example",
                                             "\"z\nFrom: ceo@corp.example\"@b.example", "d\0e@f.example"s};
const std::string escaped_from = "\"x\\x0dX-RcptTo: ceo@corp.example\\x0dX-Foo: \"@b.example";
const std::string escaped_rcpts = "\"y\\x0dX-Spam-Flag: NO\"@b.example, \"z\\x0aFrom: ceo@corp.example\"@b.example, "
                                  "d\\x00e@f.example";

bool has_control_but_lf(const std::string& s)
{
    for (const char c : s)
        if (c != '\n' && ap::is_control(c)) return true;
    return false;
}

// The header block of a stored message (up to the first empty line), one entry per line.
std::vector<std::string> header_lines(const std::string& stored)
{
    std::vector<std::string> out;
    std::size_t at = 0;
    for (;;) {
        const std::size_t nl = stored.find('\n', at);
        if (nl == std::string::npos || nl == at) return out;
        out.push_back(stored.substr(at, nl - at));
        at = nl + 1;
    }
}

// ---- the encoding -------------------------------------------------------------------------------

TEST(escape_controls, every_control_character_and_nothing_else)
{
    std::string all;
    for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
    const std::string e = ap::escape_controls(all);
    std::string expected;
    for (int b = 0; b < 256; ++b) {
        if (b < 0x20 || b == 0x7f) {
            static constexpr char hex[] = "0123456789abcdef";
            expected += "\\x";
            expected += hex[b >> 4];
            expected += hex[b & 15];
        } else {
            expected += static_cast<char>(b);  // printable ASCII and every byte >= 0x80 (UTF-8)
        }
    }
    EXPECT_EQ(e, expected);
    EXPECT_FALSE(ap::has_control(e));
    EXPECT_EQ(ap::escape_controls(evil_from), escaped_from);
    EXPECT_EQ(ap::escape_controls("j\xc3\xb6rg@ex\xc3\xa4mple.com"), "j\xc3\xb6rg@ex\xc3\xa4mple.com");
    EXPECT_EQ(ap::escape_controls("\"a b\"@c.example"), "\"a b\"@c.example");  // SP is no control
    EXPECT_TRUE(ap::has_control("a\tb"));
    EXPECT_FALSE(ap::has_control("a b\xc2\x85"));
}

// ---- maildir, mbox ------------------------------------------------------------------------------

TEST(maildir_control_chars, envelope_headers_are_escaped_never_split)
{
    // Whole (one piece) and streamed in small pieces: both paths take message_headers().
    for (const std::size_t chunk : {std::size_t{64 * 1024}, std::size_t{8}}) {
        temp_dir t;
        const std::string md = t.path + "/Maildir";
        library lib(plugin("maildir"));
        ASSERT_NE(lib.handle, nullptr) << ::dlerror();
        ASSERT_TRUE(rw::load(lib, evil_from, evil_rcpts));
        tk::host h;
        h.data_chunk_size = chunk;
        h.add(&rw::entry, tk::node::map({{"path", md}}));
        auto s = h.open("192.0.2.1", 40000);
        ASSERT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: hi\r\n\r\nhello\r\n"), "250 OK");
        const auto files = list(md + "/new");
        ASSERT_EQ(files.size(), 1u);
        const std::string stored = slurp(files[0]);
        EXPECT_FALSE(has_control_but_lf(stored)) << stored;
        EXPECT_EQ(header_lines(stored),
                  (std::vector<std::string>{"Subject: hi", "X-Peer: ('192.0.2.1', 40000)",
                                            "X-MailFrom: " + escaped_from, "X-RcptTo: " + escaped_rcpts}))
            << stored;
    }
}

TEST(mbox_control_chars, from_line_and_headers_are_escaped)
{
    temp_dir t;
    const std::string file = t.path + "/mbox";
    library lib(plugin("mbox"));
    ASSERT_NE(lib.handle, nullptr) << ::dlerror();
    ASSERT_TRUE(rw::load(lib, evil_from, evil_rcpts));
    tk::host h;
    h.add(&rw::entry, tk::node::map({{"path", file}}));
    auto s = h.open("192.0.2.1", 40000);
    ASSERT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: hi\r\n\r\nhello\r\n"), "250 OK");
    const std::string data = slurp(file);
    EXPECT_FALSE(has_control_but_lf(data)) << data;
    // One "From " line (blanks as '_', controls escaped), then the message.
    const std::string from = "From \"x\\x0dX-RcptTo:_ceo@corp.example\\x0dX-Foo:_\"@b.example ";
    ASSERT_EQ(data.rfind(from, 0), 0u) << data;
    const std::string rest = data.substr(data.find('\n') + 1);
    EXPECT_EQ(header_lines(rest),
              (std::vector<std::string>{"Subject: hi", "X-Peer: ('192.0.2.1', 40000)", "X-MailFrom: " + escaped_from,
                                        "X-RcptTo: " + escaped_rcpts}))
        << data;
    EXPECT_EQ(rest.find("\nFrom "), std::string::npos) << data;
}

// ---- debugging ----------------------------------------------------------------------------------

TEST(debugging_control_chars, mail_options_are_printed_as_python_repr)
{
    // aiosmtpd's Debugging prints repr() of the options and never the addresses; repr() already
    // writes a control character as an escape, so nothing but the content can span lines.
    library lib(plugin("debugging"));
    ASSERT_NE(lib.handle, nullptr) << ::dlerror();
    ASSERT_TRUE(rw::load(lib, evil_from, evil_rcpts, {"SIZE=1\r\nX-Foo: 1", "X=\0\x7f\t"s}));
    tk::host h;
    h.add(&rw::entry);
    auto s = h.open("127.0.0.1", 40000);
    testing::internal::CaptureStdout();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: hi\r\n\r\nbody\r\n"), "250 OK");
    EXPECT_EQ(testing::internal::GetCapturedStdout(), "---------- MESSAGE FOLLOWS ----------\n"
                                                      "mail options: ['SIZE=1\\r\\nX-Foo: 1', 'X=\\x00\\x7f\\t']\n"
                                                      "\n"
                                                      "Subject: hi\n"
                                                      "X-Peer: ('127.0.0.1', 40000)\n"
                                                      "\n"
                                                      "body\n"
                                                      "------------ END MESSAGE ------------\n");
}

// ---- proxy --------------------------------------------------------------------------------------

// A one-connection SMTP server on 127.0.0.1 that says yes to everything and records each
// command line it gets (the message itself as one "<data>" entry). Every wait is bounded.
class fake_upstream {
public:
    fake_upstream()
    {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(fd_, 4) != 0 ||
            ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
            return;
        port = ntohs(a.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    fake_upstream(const fake_upstream&) = delete;
    fake_upstream& operator=(const fake_upstream&) = delete;
    ~fake_upstream()
    {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
        ::close(fd_);
    }
    /// The commands received, once the connection ended (or after 5 s).
    std::vector<std::string> commands()
    {
        if (thread_.joinable()) thread_.join();
        return commands_;
    }
    int connections() const { return connections_.load(); }
    std::uint16_t port = 0;

private:
    bool readable(int fd)
    {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (!stop_ && std::chrono::steady_clock::now() < until) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 50) > 0) return true;
        }
        return false;
    }
    void serve()
    {
        if (!readable(fd_)) return;
        const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) return;
        ++connections_;
        const auto say = [c](std::string_view r) { (void)!::send(c, r.data(), r.size(), MSG_NOSIGNAL); };
        say("220 upstream\r\n");
        std::string in;
        bool in_data = false;
        char buf[4096];
        while (readable(c)) {
            const ssize_t n = ::recv(c, buf, sizeof buf, 0);
            if (n <= 0) break;
            in.append(buf, static_cast<std::size_t>(n));
            for (;;) {
                if (in_data) {
                    const std::size_t end = in.find("\r\n.\r\n");
                    if (end == std::string::npos) break;
                    commands_.push_back("<data>");
                    in.erase(0, end + 5);
                    in_data = false;
                    say("250 2.0.0 queued\r\n");
                    continue;
                }
                const std::size_t eol = in.find("\r\n");
                if (eol == std::string::npos) break;
                const std::string line = in.substr(0, eol);
                in.erase(0, eol + 2);
                commands_.push_back(line);
                if (line.rfind("DATA", 0) == 0) {
                    in_data = true;
                    say("354 go ahead\r\n");
                } else if (line.rfind("QUIT", 0) == 0) {
                    say("221 bye\r\n");
                    ::close(c);
                    return;
                } else {
                    say("250 ok\r\n");
                }
            }
        }
        ::close(c);
    }

    int fd_ = -1;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<int> connections_{0};
    std::vector<std::string> commands_;
};

tk::node proxy_config(std::uint16_t port)
{
    return tk::node::map(
        {{"host", "127.0.0.1"}, {"port", static_cast<int>(port)}, {"timeout", 5}, {"helo", "mx.test"}});
}

// The proxy opens the upstream transaction at MAIL with the address the MAIL hook got (the
// server's, clean); the envelope rewritten afterwards is what DATA sees: a sender or recipient
// with a control character is refused there and never sent.
TEST(proxy_control_chars, a_sender_with_a_control_character_is_553_and_nothing_is_sent)
{
    fake_upstream up;
    ASSERT_NE(up.port, 0);
    library lib(plugin("proxy"));
    ASSERT_NE(lib.handle, nullptr) << ::dlerror();
    ASSERT_TRUE(rw::load(lib, evil_from, {"c@d.example"}));
    tk::host h;
    h.add(&rw::entry, proxy_config(up.port));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: hi\r\n\r\nhello\r\n"),
              "553 5.1.7 Sender address has a control character, not relayed");
    EXPECT_TRUE(h.logged("has a control character; not relayed"));
    s.close();  // the proxy says QUIT upstream
    const std::vector<std::string> sent = up.commands();
    EXPECT_EQ(sent,
              (std::vector<std::string>{"EHLO mx.test", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "QUIT"}));
    EXPECT_EQ(up.connections(), 1);
}

TEST(proxy_control_chars, recipients_with_one_are_refused_and_never_sent)
{
    // Only bad recipients: 553 listing each (escaped), and no message sent.
    {
        fake_upstream up;
        ASSERT_NE(up.port, 0);
        library lib(plugin("proxy"));
        ASSERT_NE(lib.handle, nullptr) << ::dlerror();
        ASSERT_TRUE(rw::load(lib, "a@b.example", evil_rcpts));
        tk::host h;
        h.add(&rw::entry, proxy_config(up.port));
        auto s = h.open();
        EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: hi\r\n\r\nhello\r\n"),
                  "553-5.1.3 No recipient could be relayed\n"
                  "553-refused <\"y\\x0dX-Spam-Flag: NO\"@b.example>: 553 5.1.3 Recipient address has a control "
                  "character, not relayed\n"
                  "553-refused <\"z\\x0aFrom: ceo@corp.example\"@b.example>: 553 5.1.3 Recipient address has a "
                  "control character, not relayed\n"
                  "553 refused <d\\x00e@f.example>: 553 5.1.3 Recipient address has a control character, not relayed");
        s.close();
        const std::vector<std::string> sent = up.commands();
        EXPECT_EQ(sent, (std::vector<std::string>{"EHLO mx.test", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>",
                                                  "QUIT"}));
    }
    // Good ones next to them: relayed to the good ones only, 250 with the refusals listed.
    fake_upstream up;
    ASSERT_NE(up.port, 0);
    library lib(plugin("proxy"));
    ASSERT_NE(lib.handle, nullptr) << ::dlerror();
    ASSERT_TRUE(rw::load(lib, "a@b.example", {evil_rcpts[0], "ok@d.example", evil_rcpts[2]}));
    tk::host h;
    h.add(&rw::entry, proxy_config(up.port));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: hi\r\n\r\nhello\r\n"),
              "250-2.0.0 queued\n"
              "250-refused <\"y\\x0dX-Spam-Flag: NO\"@b.example>: 553 5.1.3 Recipient address has a control "
              "character, not relayed\n"
              "250 refused <d\\x00e@f.example>: 553 5.1.3 Recipient address has a control character, not relayed");
    s.close();
    // c@d.example (what the RCPT hook saw) is not among the recipients DATA gets: the upstream
    // transaction starts over with the good one of those.
    const std::vector<std::string> sent = up.commands();
    EXPECT_EQ(sent, (std::vector<std::string>{"EHLO mx.test", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>",
                                              "RSET", "MAIL FROM:<a@b.example>", "RCPT TO:<ok@d.example>", "DATA",
                                              "<data>", "QUIT"}));
    for (const std::string& line : sent) EXPECT_FALSE(ap::has_control(line)) << line;
}

}  // namespace
