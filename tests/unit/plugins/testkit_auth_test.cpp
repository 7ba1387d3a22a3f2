// SPDX-License-Identifier: Apache-2.0
// The test kit's ABI 1.1 AUTH support, against the bundled authfile plugin (AUTH_CHECK, suspended
// and completed by its worker threads) and the xmech fixture (plugin AUTH mechanisms: 334
// challenges set in the hook and through complete(), set_auth_identity, initial responses).
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <crypt.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
const std::string authfile = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/authfile.so";
const std::string xmech = std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/xmech.so";
const std::string scripted = std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/scripted.so";

std::string sha512(const std::string& password)
{
    auto data = std::make_unique<crypt_data>();
    std::memset(data.get(), 0, sizeof *data);
    const char* out = crypt_rn(password.c_str(), "$6$testkitsalt$", data.get(), static_cast<int>(sizeof *data));
    return out ? std::string(out) : std::string();
}

// A folder with users.txt (alice / "correct horse", bob / "s3cret"), removed afterwards.
class testkit_authfile : public ::testing::Test {
protected:
    void SetUp() override
    {
        char tmpl[] = "/tmp/testkit_auth.XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        const std::string a = sha512("correct horse");
        const std::string b = sha512("s3cret");
        ASSERT_EQ(a.rfind("$6$", 0), 0u) << a;
        std::ofstream(dir_ + "/users.txt") << "# test users\nalice:" << a << "\nbob:" << b << "\n";
        h_.config_dir = dir_;  // users_file is relative: resolved against config_dir()
        h_.load(authfile, tk::node::map({{"users_file", "users.txt"}, {"workers", 1}}));
    }
    void TearDown() override
    {
        if (!dir_.empty()) std::filesystem::remove_all(dir_);
    }

    std::string dir_;
    tk::host h_;
};

TEST_F(testkit_authfile, plain_needs_tls_then_authenticates)
{
    EXPECT_EQ(h_.hook_count(ASIOSMTPD_HOOK_AUTH_CHECK), 1u);
    auto s = h_.open();
    EXPECT_EQ(s.cmd("AUTH PLAIN"), "503 Error: send EHLO first");
    EXPECT_EQ(s.cmd("HELO client.example"), "250 mx.test.example");
    EXPECT_EQ(s.cmd("AUTH PLAIN"), "500 Error: command 'AUTH' not recognized");
    // No AUTH line without TLS (auth_require_tls, the server's default).
    EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n250 HELP");
    EXPECT_EQ(s.auth("PLAIN", "alice", "correct horse"),
              "538 5.7.11 Encryption required for requested authentication mechanism");
    EXPECT_EQ(s.tls(), "");
    EXPECT_TRUE(s.tls_active());
    EXPECT_EQ(s.cmd("AUTH PLAIN"), "503 Error: send EHLO first");  // TLS forgot the greeting
    EXPECT_EQ(s.cmd("EHLO client.example"),
              "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n250-AUTH LOGIN PLAIN\n250 HELP");
    EXPECT_EQ(s.auth("PLAIN", "alice", "correct horse"), "235 2.7.0 Authentication successful");
    EXPECT_TRUE(s.authenticated());
    EXPECT_EQ(s.auth_login(), "alice");
    EXPECT_EQ(s.auth("PLAIN", "alice", "correct horse"), "503 Already authenticated");
    EXPECT_EQ(s.send_mail("alice@example.org", {"x@example.net"}, "Subject: t\r\n\r\nhi\r\n"), "250 OK");
}

TEST_F(testkit_authfile, plain_refusals_are_535)
{
    auto s = h_.open_tls();
    ASSERT_EQ(s.cmd("EHLO client.example").substr(0, 4), "250-");
    EXPECT_EQ(s.auth("PLAIN", "alice", "wrong"), "535 5.7.8 Authentication credentials invalid");
    EXPECT_EQ(s.auth("PLAIN", "mallory", "correct horse"), "535 5.7.8 Authentication credentials invalid");
    EXPECT_FALSE(s.authenticated());
    EXPECT_EQ(s.auth_login(), "");
    EXPECT_FALSE(s.closed());
    // The third failure (auth_max_failures: 3) is answered, then the server says 421 and closes.
    EXPECT_EQ(s.auth("PLAIN", "bob", "correct horse", "alice"),
              "535 5.7.8 Authentication credentials invalid\n"
              "421 4.7.0 mx.test.example Error: too many failed authentication attempts");
    EXPECT_TRUE(s.closed());
}

TEST_F(testkit_authfile, plain_authzid_must_be_the_user)
{
    auto s = h_.open_tls();
    s.cmd("EHLO client.example");
    EXPECT_EQ(s.auth("PLAIN", "bob", "s3cret", "bob"), "235 2.7.0 Authentication successful");
    EXPECT_EQ(s.auth_login(), "bob");
}

TEST_F(testkit_authfile, login_by_hand_and_by_helper)
{
    auto s = h_.open_tls();
    s.cmd("EHLO client.example");
    EXPECT_EQ(s.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    EXPECT_EQ(s.cmd(tk::base64_encode("bob")), "334 UGFzc3dvcmQ6");
    EXPECT_EQ(s.cmd(tk::base64_encode("wrong")), "535 5.7.8 Authentication credentials invalid");
    EXPECT_EQ(s.auth("LOGIN", "bob", "s3cret"), "235 2.7.0 Authentication successful");
    EXPECT_EQ(s.auth_login(), "bob");
}

TEST_F(testkit_authfile, exchange_errors)
{
    auto s = h_.open_tls();
    s.cmd("EHLO client.example");
    EXPECT_EQ(s.cmd("AUTH"), "501 Not enough value");
    EXPECT_EQ(s.cmd("AUTH PLAIN a b"), "501 Too many values");
    EXPECT_EQ(s.cmd("AUTH PLAIN !!!!"), "501 5.5.2 Can't decode base64");
    EXPECT_EQ(s.cmd("AUTH CRAM-MD5"), "504 5.5.4 Unrecognized authentication type");
    EXPECT_EQ(s.cmd("AUTH PLAIN " + tk::base64_encode("no separators")), "501 5.5.2 Can't split auth value");
    EXPECT_EQ(s.cmd("AUTH PLAIN"), "334 ");
    EXPECT_EQ(s.cmd("*"), "501 5.7.0 Auth aborted");
    EXPECT_EQ(s.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    EXPECT_EQ(s.cmd("not base64"), "501 5.5.2 Can't decode base64");
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");  // back to commands
    EXPECT_FALSE(s.closed());
}

TEST_F(testkit_authfile, session_info_reports_the_login_and_tls)
{
    h_.load(scripted,
            tk::node::map(
                {{"hooks",
                  tk::node::map(
                      {{"NOOP",
                        tk::node::map(
                            {{"verdict", "accept"},
                             {"code", 250},
                             {"text", "tls={tls} {tls_version} {tls_cipher} auth={auth} login={auth_login}"}})}})}}));
    auto s = h_.open();
    EXPECT_EQ(s.cmd("NOOP"), "250 tls=0   auth=0 login=");
    s.tls({"TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", "CN=client"});
    s.cmd("EHLO client.example");
    EXPECT_EQ(s.auth("LOGIN", "alice", "correct horse"), "235 2.7.0 Authentication successful");
    EXPECT_EQ(s.cmd("NOOP"), "250 tls=1 TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 auth=1 login=alice");
}

TEST(testkit_auth, without_an_auth_check_plugin_every_credential_fails)
{
    tk::host h;
    h.auth_require_tls = false;
    auto s = h.open();
    EXPECT_EQ(s.cmd("EHLO client.example"),
              "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n250-AUTH LOGIN PLAIN\n250 HELP");
    EXPECT_EQ(s.auth("PLAIN", "alice", "x"), "535 5.7.8 Authentication credentials invalid");
}

TEST(testkit_auth, auth_required_guards_the_transaction)
{
    tk::host h;
    h.auth_required = true;
    auto s = h.open();
    s.cmd("EHLO client.example");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "530 5.7.0 Authentication required");
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");
}

TEST(testkit_auth, authfile_refuses_a_missing_users_file)
{
    tk::host h;
    h.config_dir = "/nonexistent-testkit";
    const std::string why = h.refusal(authfile, tk::node::map({{"users_file", "users.txt"}}));
    EXPECT_NE(why.find("users_file: cannot read \"/nonexistent-testkit/users.txt\""), std::string::npos) << why;
}

// ---- xmech: plugin mechanisms ----------------------------------------------------------------

TEST(testkit_auth, mechanisms_are_registered_and_advertised)
{
    tk::host h;
    h.load(xmech);
    EXPECT_EQ(h.auth_mechanisms(), (std::vector<std::string>{"X-TEST", "X-LATER", "X-ONESHOT"}));
    auto s = h.open_tls();
    EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n"
                                            "250-AUTH LOGIN PLAIN X-LATER X-ONESHOT X-TEST\n250 HELP");
    const std::string why = h.refusal(xmech);
    EXPECT_NE(why.find("E_CONFLICT"), std::string::npos) << why;
    EXPECT_EQ(h.auth_mechanisms().size(), 3u);  // the refused instance's mechanisms are dropped
}

TEST(testkit_auth, mechanism_challenges_and_identity)
{
    tk::host h;
    h.load(xmech);
    auto s = h.open_tls();
    s.cmd("EHLO client.example");
    const tk::sasl_result bad = s.sasl("X-TEST", {"alice", "open sesam"});
    EXPECT_EQ(bad.challenges, (std::vector<std::string>{"who?", "secret?"}));
    EXPECT_EQ(bad.reply, "535 5.7.8 Authentication credentials invalid");
    // By hand: challenges are base64 on the wire, the mechanism name is case-insensitive.
    EXPECT_EQ(s.cmd("auth x-test"), "334 " + tk::base64_encode("who?"));
    EXPECT_EQ(s.cmd(tk::base64_encode("alice")), "334 " + tk::base64_encode("secret?"));
    EXPECT_EQ(s.cmd(tk::base64_encode("open sesame")), "235 2.7.0 Authentication successful");
    EXPECT_EQ(s.auth_login(), "alice");  // set_auth_identity
}

TEST(testkit_auth, mechanism_aborted_when_answers_run_out)
{
    tk::host h;
    h.load(xmech);
    auto s = h.open_tls();
    s.cmd("EHLO client.example");
    const tk::sasl_result r = s.sasl("X-TEST", {"alice"});
    EXPECT_EQ(r.challenges, (std::vector<std::string>{"who?", "secret?"}));
    EXPECT_EQ(r.reply, "501 5.7.0 Auth aborted");
    EXPECT_FALSE(s.authenticated());
}

TEST(testkit_auth, mechanism_completed_from_a_worker_thread)
{
    tk::host h;
    h.load(xmech);
    auto s = h.open_tls();
    s.cmd("EHLO client.example");
    // X-LATER: AUTH_CHALLENGE through complete() (the challenge is complete's text).
    const tk::sasl_result r = s.sasl("X-LATER", {"open sesame"});
    EXPECT_EQ(r.challenges, std::vector<std::string>{"later?"});
    EXPECT_EQ(r.reply, "235 2.7.0 Authentication successful");
    EXPECT_TRUE(s.authenticated());
    EXPECT_EQ(s.auth_login(), "");  // no identity given
}

TEST(testkit_auth, mechanism_with_an_initial_response)
{
    tk::host h;
    h.load(xmech);
    auto s = h.open_tls();
    s.cmd("EHLO client.example");
    EXPECT_EQ(s.sasl("X-ONESHOT").reply, "535 5.7.8 token refused");
    EXPECT_EQ(s.sasl("X-ONESHOT", {"nope"}, true).reply, "535 5.7.8 token refused");
    EXPECT_EQ(s.cmd("AUTH X-ONESHOT " + tk::base64_encode("token-ok")), "235 2.7.0 Authentication successful");
    EXPECT_EQ(s.auth_login(), "oneshot");
}

TEST(testkit_auth, base64_helpers)
{
    EXPECT_EQ(tk::base64_encode(""), "");
    EXPECT_EQ(tk::base64_encode("Username:"), "VXNlcm5hbWU6");
    EXPECT_EQ(tk::base64_encode(std::string("\0a\0b", 4)), "AGEAYg==");
    EXPECT_EQ(tk::base64_decode("AGEAYg=="), std::string("\0a\0b", 4));
    EXPECT_EQ(tk::base64_decode("="), std::string());
    EXPECT_FALSE(tk::base64_decode("abc"));
    EXPECT_FALSE(tk::base64_decode("ab=c"));
}

}  // namespace
