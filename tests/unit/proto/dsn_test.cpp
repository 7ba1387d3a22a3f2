// SPDX-License-Identifier: Apache-2.0
// The RFC 3461 parameter checks, one rule at a time.
#include "proto/dsn.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace asiosmtpd::proto::dsn {
namespace {

TEST(dsn, xtext)
{
    EXPECT_TRUE(is_xtext(""));
    EXPECT_TRUE(is_xtext("abc!~"));
    EXPECT_TRUE(is_xtext("a+2Bb+3Dc"));
    EXPECT_TRUE(is_xtext("+2b"));  // lower-case hex accepted (Postfix)
    EXPECT_FALSE(is_xtext("a=b"));
    EXPECT_FALSE(is_xtext("a+b"));
    EXPECT_FALSE(is_xtext("a+2"));
    EXPECT_FALSE(is_xtext("+"));
    EXPECT_FALSE(is_xtext("+GG"));
    EXPECT_FALSE(is_xtext("a b"));
    EXPECT_FALSE(is_xtext("a\x7f"));
    EXPECT_FALSE(is_xtext("\xc3\xa9"));
    EXPECT_EQ(decode_xtext("a+2Bb+3Dc"), "a+b=c");
    EXPECT_EQ(decode_xtext("+20"), " ");
    EXPECT_EQ(decode_xtext("+00"), std::string(1, '\0'));
    EXPECT_EQ(decode_xtext("x=y"), std::nullopt);
}

TEST(dsn, ret)
{
    EXPECT_TRUE(valid_ret("FULL"));
    EXPECT_TRUE(valid_ret("hdrs"));
    EXPECT_FALSE(valid_ret("HDR"));
    EXPECT_FALSE(valid_ret(""));
    EXPECT_FALSE(valid_ret("FULL,HDRS"));
}

TEST(dsn, envid)
{
    EXPECT_TRUE(valid_envid("QQ314159"));
    EXPECT_TRUE(valid_envid("a+20b"));                // decodes to a space: printable
    EXPECT_FALSE(valid_envid("a+0Db"));               // a CR
    EXPECT_FALSE(valid_envid("a+80"));                // not ASCII
    EXPECT_FALSE(valid_envid("a=b"));                 // not xtext
    EXPECT_TRUE(valid_envid(std::string(100, 'x')));  // RFC 3461 §4.4: 100 characters
    EXPECT_FALSE(valid_envid(std::string(101, 'x')));
}

TEST(dsn, notify)
{
    EXPECT_TRUE(valid_notify("NEVER"));
    EXPECT_TRUE(valid_notify("never"));
    EXPECT_TRUE(valid_notify("SUCCESS"));
    EXPECT_TRUE(valid_notify("SUCCESS,FAILURE,DELAY"));
    EXPECT_TRUE(valid_notify("delay,success"));
    EXPECT_TRUE(valid_notify("FAILURE,FAILURE"));  // Postfix accepts a repeat
    EXPECT_FALSE(valid_notify("NEVER,SUCCESS"));   // RFC 3461 §4.1: NEVER alone
    EXPECT_FALSE(valid_notify("SUCCESS,NEVER"));
    EXPECT_FALSE(valid_notify("SUCCESS,"));
    EXPECT_FALSE(valid_notify(",SUCCESS"));
    EXPECT_FALSE(valid_notify("SUCCESS,,DELAY"));
    EXPECT_FALSE(valid_notify("SOMETIMES"));
    EXPECT_FALSE(valid_notify(""));
}

TEST(dsn, orcpt)
{
    EXPECT_TRUE(valid_orcpt("rfc822;Bob@Example.ORG"));
    EXPECT_TRUE(valid_orcpt("RFC822;a+2Bb@c"));
    EXPECT_TRUE(valid_orcpt("x-local;name"));
    EXPECT_FALSE(valid_orcpt("rfc822"));          // no ';'
    EXPECT_FALSE(valid_orcpt(";a@b"));            // no addr-type
    EXPECT_FALSE(valid_orcpt("rfc822;"));         // no address
    EXPECT_FALSE(valid_orcpt("rfc(822);a@b"));    // addr-type not an atom
    EXPECT_FALSE(valid_orcpt("rfc822;a=b@c"));    // not xtext
    EXPECT_FALSE(valid_orcpt("rfc822;a+0Ab@c"));  // decodes to a LF
    const std::string at_limit = "rfc822;" + std::string(500 - 7, 'a');
    EXPECT_TRUE(valid_orcpt(at_limit));
    EXPECT_FALSE(valid_orcpt(at_limit + "a"));  // RFC 3461 §4.2: 500 characters
}

TEST(dsn, check_mail_and_rcpt)
{
    using v = std::vector<std::string>;
    EXPECT_EQ(check_mail(v{}), problem::none);
    EXPECT_EQ(check_mail(v{"SIZE=10", "RET=HDRS", "ENVID=x"}), problem::none);
    EXPECT_EQ(check_mail(v{"RET"}), problem::bad_ret);
    EXPECT_EQ(check_mail(v{"RET=FULL", "RET=FULL"}), problem::bad_ret);  // twice
    EXPECT_EQ(check_mail(v{"ENVID=a", "ENVID=b"}), problem::bad_envid);
    EXPECT_EQ(check_mail(v{"ENVID=a=b", "RET=X"}), problem::bad_envid);  // the first in order
    EXPECT_EQ(check_mail(v{"NOTIFY=NEVER"}), problem::none);             // not MAIL's: left alone
    EXPECT_EQ(check_rcpt(v{"NOTIFY=SUCCESS", "ORCPT=rfc822;a@b"}), problem::none);
    EXPECT_EQ(check_rcpt(v{"NOTIFY"}), problem::bad_notify);
    EXPECT_EQ(check_rcpt(v{"NOTIFY=NEVER", "NOTIFY=NEVER"}), problem::bad_notify);
    EXPECT_EQ(check_rcpt(v{"ORCPT=rfc822;a", "ORCPT=rfc822;a"}), problem::bad_orcpt);
    EXPECT_EQ(check_rcpt(v{"RET=FULL"}), problem::none);
}

TEST(dsn, line_allowance)
{
    EXPECT_EQ(line_allowance("MAIL"), std::string_view(" RET=HDRS ENVID=").size() + 100);
    EXPECT_EQ(line_allowance("RCPT"), std::string_view(" NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=").size() + 500);
    EXPECT_EQ(line_allowance("DATA"), 0u);
}

}  // namespace
}  // namespace asiosmtpd::proto::dsn
