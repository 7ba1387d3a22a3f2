// SPDX-License-Identifier: Apache-2.0
// DSN for plugins through the test kit (the server's engine and hook chain): with enable_dsn a
// plugin reads RET/ENVID/NOTIFY/ORCPT from the parameters it already has (MAIL and RCPT hook
// arguments, call::mail_params(), call::rcpt_params(i)) with asiosmtpd/dsn.hpp; no ABI change.
#include <asiosmtpd/dsn.hpp>
#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
namespace sdk = asiosmtpd::sdk;
namespace dsn = asiosmtpd::sdk::dsn;

struct seen_t {
    dsn::mail_request at_mail;
    std::vector<dsn::rcpt_request> at_rcpt;
    dsn::mail_request at_data;
    std::vector<std::string> data_rcpts;
    std::vector<dsn::rcpt_request> data_rcpt_requests;
};
seen_t seen;

class dsn_reader {
public:
    explicit dsn_reader(sdk::registrar& reg)
    {
        reg.on<&dsn_reader::on_mail>(sdk::hook::mail);
        reg.on<&dsn_reader::on_rcpt>(sdk::hook::rcpt);
        reg.on<&dsn_reader::on_data>(sdk::hook::data);
    }
    sdk::verdict on_mail(sdk::call&, const sdk::address_args& a)
    {
        seen.at_mail = dsn::parse_mail(a.params);
        return sdk::verdict::continue_;
    }
    sdk::verdict on_rcpt(sdk::call&, const sdk::address_args& a)
    {
        seen.at_rcpt.push_back(dsn::parse_rcpt(a.params));
        return sdk::verdict::continue_;
    }
    sdk::verdict on_data(sdk::call& c, const sdk::data_args&)
    {
        seen.at_data = dsn::parse_mail(c.mail_params());
        const auto rcpts = c.rcpts();
        for (std::size_t i = 0; i < rcpts.size(); ++i) {
            seen.data_rcpts.emplace_back(rcpts[i]);
            seen.data_rcpt_requests.push_back(dsn::parse_rcpt(c.rcpt_params(i)));
        }
        return sdk::verdict::continue_;
    }
};

const asiosmtpd_plugin_descriptor* dsn_reader_entry()
{
    static const asiosmtpd_plugin_descriptor d = {sizeof d,
                                                  ASIOSMTPD_ABI_MAJOR,
                                                  3,
                                                  0,
                                                  "dsn_reader",
                                                  "1.0",
                                                  "reads DSN parameters",
                                                  &sdk::detail::entry<dsn_reader>::create,
                                                  &sdk::detail::entry<dsn_reader>::destroy};
    return &d;
}

TEST(testkit_dsn, plugins_read_the_parameters_with_dsn_hpp)
{
    seen = {};
    tk::host h;
    h.enable_dsn = true;
    h.add(&dsn_reader_entry);
    auto s = h.open();
    EXPECT_NE(s.cmd("EHLO client.example").find("\n250-DSN\n"), std::string::npos);
    EXPECT_EQ(s.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=Id+2B42"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<b@example.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;B@Example.org"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<c@example.org>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<d@example.org> NOTIFY=NEVER"), "250 OK");
    EXPECT_EQ(s.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    EXPECT_EQ(s.cmd("Subject: x"), "");
    EXPECT_EQ(s.cmd("."), "250 OK");

    EXPECT_EQ(seen.at_mail.ret, dsn::ret_type::hdrs);
    EXPECT_EQ(seen.at_mail.envid, "Id+42");
    ASSERT_EQ(seen.at_rcpt.size(), 3u);
    EXPECT_EQ(seen.at_rcpt[0].notify, dsn::notify_success | dsn::notify_delay);
    EXPECT_EQ(seen.at_rcpt[0].orcpt_address, "B@Example.org");
    EXPECT_EQ(seen.at_rcpt[1].notify, 0u);
    EXPECT_EQ(seen.at_rcpt[2].notify, dsn::notify_never);
    EXPECT_EQ(seen.at_data.envid_xtext, "Id+2B42");
    EXPECT_EQ(seen.data_rcpts, (std::vector<std::string>{"b@example.org", "c@example.org", "d@example.org"}));
    ASSERT_EQ(seen.data_rcpt_requests.size(), 3u);
    EXPECT_EQ(seen.data_rcpt_requests[0].orcpt_type, "rfc822");
    EXPECT_EQ(seen.data_rcpt_requests[0].orcpt_address, "B@Example.org");
    EXPECT_FALSE(seen.data_rcpt_requests[1].has_orcpt);
    EXPECT_EQ(seen.data_rcpt_requests[2].notify, dsn::notify_never);
}

TEST(testkit_dsn, off_is_aiosmtpd)
{
    seen = {};
    tk::host h;
    h.add(&dsn_reader_entry);
    auto s = h.open();
    EXPECT_EQ(s.cmd("EHLO client.example").find("DSN"), std::string::npos);
    EXPECT_EQ(s.cmd("MAIL FROM:<a@example.org> RET=HDRS"),
              "555 MAIL FROM parameters not recognized or not implemented");
}

}  // namespace
