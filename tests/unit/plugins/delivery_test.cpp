// SPDX-License-Identifier: Apache-2.0
// The maildir, mbox and proxy plugins through the SDK test kit (the server's engine, no
// sockets): what they store, their configuration checks, and 451 when delivery fails. (The
// real server, smtp-source and upstreams: tests/integration/test_delivery_*.py.)
#include "file_helpers.hpp"

#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
std::string plugin(const char* name) { return std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/" + name + ".so"; }

using asiosmtpd::test::list;
using asiosmtpd::test::slurp;
using asiosmtpd::test::temp_dir;

TEST(maildir, stores_as_aiosmtpd_mailbox)
{
    temp_dir t;
    tk::host h;
    h.load(plugin("maildir"), tk::node::map({{"path", t.path + "/Maildir"}}));
    auto s = h.open("192.0.2.1", 40000);
    s.cmd("EHLO c.example");
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example", "e@f.example"}, "Subject: x\r\n\r\n.hi\r\n"), "250 OK");
    const auto files = list(t.path + "/Maildir/new");
    ASSERT_EQ(files.size(), 1u);
    EXPECT_EQ(slurp(files[0]), "Subject: x\nX-Peer: ('192.0.2.1', 40000)\nX-MailFrom: a@b.example\n"
                               "X-RcptTo: c@d.example, e@f.example\n\n.hi\n");
    EXPECT_TRUE(list(t.path + "/Maildir/tmp").empty());
    EXPECT_TRUE(list(t.path + "/Maildir/cur").empty());
}

TEST(maildir, refuses_bad_config)
{
    tk::host h;
    EXPECT_NE(h.refusal(plugin("maildir")).find("expected a map"), std::string::npos);
    EXPECT_NE(
        h.refusal(plugin("maildir"), tk::node::map({{"paht", "x"}})).find("paht: unknown key (did you mean 'path'?)"),
        std::string::npos);
    EXPECT_NE(h.refusal(plugin("maildir"), tk::node::map({{"path", "/proc/no/such"}})).find("cannot create"),
              std::string::npos);
}

TEST(maildir, failure_is_451_and_nothing_in_new)
{
    temp_dir t;
    tk::host h;
    h.load(plugin("maildir"), tk::node::map({{"path", t.path}}));
    ::rmdir((t.path + "/tmp").c_str());
    auto s = h.open();
    s.cmd("EHLO c.example");
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "x\r\n"),
              "451 4.3.0 Requested action aborted: local error in processing");
    EXPECT_TRUE(list(t.path + "/new").empty());
    EXPECT_TRUE(h.logged("answering 451"));
}

TEST(mbox, appends_with_from_line_and_quoting)
{
    temp_dir t;
    tk::host h;
    const std::string file = t.path + "/mbox";
    h.load(plugin("mbox"), tk::node::map({{"path", file}}));
    auto s = h.open("192.0.2.1", 40000);
    s.cmd("EHLO c.example");
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: x\r\n\r\nFrom me\r\n>From you\r\n"), "250 OK");
    EXPECT_EQ(s.send_mail("", {"c@d.example"}, ""), "250 OK");  // MAIL FROM:<>
    const std::string data = slurp(file);
    const std::string first = "Subject: x\nX-Peer: ('192.0.2.1', 40000)\nX-MailFrom: a@b.example\n"
                              "X-RcptTo: c@d.example\n\n>From me\n>>From you\n\n";
    ASSERT_EQ(data.rfind("From a@b.example ", 0), 0u);
    EXPECT_NE(data.find("\n" + first + "From MAILER-DAEMON "), std::string::npos) << data;
}

TEST(proxy, refuses_bad_config)
{
    tk::host h;
    EXPECT_NE(h.refusal(plugin("proxy"), tk::node::map({{"port", 25}})).find("host: required"), std::string::npos);
    EXPECT_NE(h.refusal(plugin("proxy"), tk::node::map({{"host", "x"}, {"port", 70000}})).find("between 1 and 65535"),
              std::string::npos);
    EXPECT_NE(h.refusal(plugin("proxy"), tk::node::map({{"host", "x"}, {"timeout", 0}})).find("timeout"),
              std::string::npos);
}

TEST(proxy, upstream_down_is_451)
{
    tk::host h;
    // Port 1 on loopback: nobody listens there.
    h.load(plugin("proxy"), tk::node::map({{"host", "127.0.0.1"}, {"port", 1}, {"timeout", 2}}));
    auto s = h.open();
    s.cmd("EHLO c.example");
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "x\r\n"), "451 4.4.1 Upstream unavailable, try again later");
    EXPECT_TRUE(h.logged("cannot connect"));
}

}  // namespace
