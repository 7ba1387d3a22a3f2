// SPDX-License-Identifier: Apache-2.0
// asiosmtpd/dsn.hpp on its own: xtext both ways, and the parameters as the host gives them.
#include <asiosmtpd/dsn.hpp>

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

namespace {

namespace dsn = asiosmtpd::sdk::dsn;

TEST(sdk_dsn, xtext)
{
    EXPECT_EQ(dsn::xtext_decode("a+2Bb+3dc"), "a+b=c");
    EXPECT_EQ(dsn::xtext_decode(""), "");
    EXPECT_EQ(dsn::xtext_decode("a=b"), std::nullopt);
    EXPECT_EQ(dsn::xtext_decode("a+2"), std::nullopt);
    EXPECT_EQ(dsn::xtext_decode("a b"), std::nullopt);
    EXPECT_EQ(dsn::xtext_encode("a+b=c d\x01\xff"), "a+2Bb+3Dc+20d+01+FF");
    for (const std::string& s :
         std::vector<std::string>{"", "plain", "+=+=", "with space", "\r\n", std::string(1, '\0')})
        EXPECT_EQ(dsn::xtext_decode(dsn::xtext_encode(s)), s);
}

TEST(sdk_dsn, notify)
{
    EXPECT_EQ(dsn::parse_notify("NEVER"), dsn::notify_never);
    EXPECT_EQ(dsn::parse_notify("delay,SUCCESS"), dsn::notify_delay | dsn::notify_success);
    EXPECT_EQ(dsn::parse_notify("SUCCESS,BOGUS"), 0u);
    EXPECT_EQ(dsn::notify_text(dsn::notify_failure | dsn::notify_success), "SUCCESS,FAILURE");
    EXPECT_EQ(dsn::notify_text(dsn::notify_never), "NEVER");
    EXPECT_EQ(dsn::notify_text(0), "");
}

TEST(sdk_dsn, mail)
{
    const std::vector<std::string_view> params{"SIZE=100", "RET=HDRS", "ENVID=Q+2Bq1"};
    const dsn::mail_request m = dsn::parse_mail(params);
    EXPECT_EQ(m.ret, dsn::ret_type::hdrs);
    EXPECT_TRUE(m.has_envid);
    EXPECT_EQ(m.envid, "Q+q1");
    EXPECT_EQ(m.envid_xtext, "Q+2Bq1");
    EXPECT_EQ(dsn::mail_params(m), (std::vector<std::string>{"RET=HDRS", "ENVID=Q+2Bq1"}));
    const dsn::mail_request none = dsn::parse_mail(std::vector<std::string>{"BODY=8BITMIME", "RETX=1", "ENVID=a=b"});
    EXPECT_EQ(none.ret, dsn::ret_type::unset);
    EXPECT_FALSE(none.has_envid);
    EXPECT_TRUE(dsn::mail_params(none).empty());
}

TEST(sdk_dsn, rcpt)
{
    const std::vector<std::string> params{"NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob+2Bx@Example.ORG"};
    const dsn::rcpt_request r = dsn::parse_rcpt(params);
    EXPECT_EQ(r.notify, dsn::notify_success | dsn::notify_failure);
    EXPECT_TRUE(r.has_orcpt);
    EXPECT_EQ(r.orcpt_type, "rfc822");
    EXPECT_EQ(r.orcpt_address, "Bob+x@Example.ORG");
    EXPECT_EQ(r.orcpt_xtext, "Bob+2Bx@Example.ORG");
    EXPECT_EQ(dsn::rcpt_params(r), params);
    const dsn::rcpt_request none = dsn::parse_rcpt(std::vector<std::string>{"ORCPT=rfc822", "ORCPT=;a", "NOTIFY=X"});
    EXPECT_EQ(none.notify, 0u);
    EXPECT_FALSE(none.has_orcpt);
    EXPECT_TRUE(dsn::is_dsn_param("orcpt=x;y"));
    EXPECT_TRUE(dsn::is_dsn_param("RET=FULL"));
    EXPECT_FALSE(dsn::is_dsn_param("SIZE=1"));
}

}  // namespace
