// SPDX-License-Identifier: Apache-2.0
// The embedding API (asiosmtpd::controller, aiosmtpd's Controller) end to end on 127.0.0.1:
// a server on background threads, real plugins through the ABI, a blocking client.
// Every server a test starts, the test stops (the controller's destructor too).
#include <asiosmtpd/controller.hpp>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

const std::string fixtures = ASIOSMTPD_TEST_PLUGIN_DIR;

/// A line-oriented blocking SMTP client with a receive timeout (bounded waits).
class client {
public:
    explicit client(std::uint16_t port) : socket_(ioc_)
    {
        socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
        const timeval tv{5, 0};
        ::setsockopt(socket_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    std::string line()
    {
        boost::system::error_code ec;
        const std::size_t n = asio::read_until(socket_, buf_, "\r\n", ec);
        if (ec) return "<" + ec.message() + ">";
        std::string l(asio::buffers_begin(buf_.data()),
                      asio::buffers_begin(buf_.data()) + static_cast<std::ptrdiff_t>(n) - 2);
        buf_.consume(n);
        return l;
    }
    /// The reply to one command: all lines of a multi-line reply joined by '|'.
    std::string reply()
    {
        std::string all;
        for (;;) {
            const std::string l = line();
            all += (all.empty() ? "" : "|") + l;
            if (l.size() < 4 || l[3] != '-') return all;
        }
    }
    std::string send(const std::string& command)
    {
        asio::write(socket_, asio::buffer(command + "\r\n"));
        return reply();
    }
    void raw(const std::string& bytes) { asio::write(socket_, asio::buffer(bytes)); }

private:
    asio::io_context ioc_;
    tcp::socket socket_;
    asio::streambuf buf_;
};

std::string yaml(const std::string& plugins, const std::string& server_extra = "")
{
    return "server:\n  hostname: mx.test\n  ident: embedded\n  listen: [{address: 127.0.0.1, port: 0}]\n"
           "  workers: 2\n  shutdown_grace: 2\n" +
           server_extra + "plugins:\n" + plugins;
}

TEST(controller, serves_a_transaction_through_the_sink_plugin)
{
    auto c = asiosmtpd::controller::from_yaml(yaml("  - name: sink\n"));
    c.start();
    ASSERT_NE(c.port(), 0);
    EXPECT_EQ(c.address(), "127.0.0.1");
    client cl(c.port());
    EXPECT_EQ(cl.reply(), "220 mx.test embedded");
    EXPECT_EQ(cl.send("EHLO me"), "250-mx.test|250-SIZE 33554432|250-8BITMIME|250 HELP");
    // Pipelined: one write, replies in order.
    cl.raw("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    EXPECT_EQ(cl.reply(), "250 OK");
    EXPECT_EQ(cl.reply(), "250 OK");
    EXPECT_EQ(cl.reply(), "354 End data with <CR><LF>.<CR><LF>");
    EXPECT_EQ(cl.send("Subject: t\r\n\r\nbody\r\n."), "250 OK");
    EXPECT_EQ(cl.send("QUIT"), "221 Bye");
    c.stop();
}

TEST(controller, a_hook_completed_later_from_another_thread)
{
    auto c = asiosmtpd::controller::from_yaml(yaml(
        "  - path: " + fixtures +
        "/scripted.so\n"
        "    config: {hooks: {RCPT: {verdict: accept, code: 250, text: \"2.1.5 checked {arg}\", delay_ms: 200}}}\n"));
    c.start();
    client cl(c.port());
    cl.reply();
    cl.send("HELO me");
    cl.send("MAIL FROM:<a@b.c>");
    const auto t0 = std::chrono::steady_clock::now();
    // The NOOP waits behind the pending RCPT: replies stay in order.
    cl.raw("RCPT TO:<d@e.f>\r\nNOOP\r\n");
    EXPECT_EQ(cl.reply(), "250 2.1.5 checked d@e.f");
    EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(150));
    EXPECT_EQ(cl.reply(), "250 OK");
    EXPECT_EQ(cl.send("QUIT"), "221 Bye");
    c.stop();
}

TEST(controller, a_hook_that_never_completes_costs_one_451_not_the_session)
{
    auto c = asiosmtpd::controller::from_yaml(yaml("  - path: " + fixtures +
                                                   "/scripted.so\n"
                                                   "    timeout: 0.3\n"
                                                   "    config: {hooks: {MAIL: {verdict: pending_never}}}\n"));
    c.start();
    client cl(c.port());
    cl.reply();
    cl.send("HELO me");
    EXPECT_EQ(cl.send("MAIL FROM:<a@b.c>"), "451 4.3.0 Error: internal");
    EXPECT_EQ(cl.send("NOOP"), "250 OK");
    // Other sessions are served meanwhile and afterwards.
    client other(c.port());
    EXPECT_EQ(other.reply(), "220 mx.test embedded");
    c.stop();
}

TEST(controller, stop_closes_idle_sessions_with_421_and_returns)
{
    auto c = asiosmtpd::controller::from_yaml(yaml("  - name: sink\n"));
    c.start();
    client cl(c.port());
    cl.reply();
    cl.send("EHLO me");
    const auto t0 = std::chrono::steady_clock::now();
    std::thread stopper([&] { c.stop(); });
    EXPECT_EQ(cl.reply(), "421 4.3.2 mx.test Service shutting down");
    stopper.join();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
}

TEST(controller, a_session_mid_transaction_finishes_within_the_grace_period)
{
    auto c = asiosmtpd::controller::from_yaml(yaml("  - name: sink\n"));
    c.start();
    client cl(c.port());
    cl.reply();
    cl.send("EHLO me");
    cl.send("MAIL FROM:<a@b.c>");
    std::thread stopper([&] { c.stop(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(cl.send("RCPT TO:<d@e.f>"), "250 OK");
    EXPECT_EQ(cl.send("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    EXPECT_EQ(cl.send("x\r\n."), "250 OK");
    // Transaction over: the next boundary ends the session.
    EXPECT_EQ(cl.reply(), "421 4.3.2 mx.test Service shutting down");
    stopper.join();
}

TEST(controller, start_reports_bad_plugins_and_ports_in_use)
{
    auto bad = asiosmtpd::controller::from_yaml(yaml("  - path: " + fixtures + "/wrong_abi.so\n"));
    try {
        bad.start();
        FAIL() << "started with a wrong-ABI plugin";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("wrong_abi.so"), std::string::npos) << e.what();
    }
    auto first = asiosmtpd::controller::from_yaml(yaml("  - name: sink\n"));
    first.start();
    const std::string taken = "server:\n  listen: [{address: 127.0.0.1, port: " + std::to_string(first.port()) +
                              "}]\nplugins: [{name: sink}]\n";
    auto second = asiosmtpd::controller::from_yaml(taken);
    try {
        second.start();
        FAIL() << "bound a port in use";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("cannot listen on 127.0.0.1:"), std::string::npos) << e.what();
    }
    first.stop();
}

}  // namespace
