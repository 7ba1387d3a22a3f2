// SPDX-License-Identifier: Apache-2.0
// The held message and the edited transaction (plugin/draft.hpp): the header block as the
// client sent it (folded fields, no body, a first line that is not a field, bare LF), every
// edit op, reading back in pieces from memory and from the spool file, and the edit checks.
#include "plugin/draft.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace asiosmtpd::plugin {
namespace {

asiosmtpd_str str(std::string_view s) { return {s.data(), s.size()}; }

// check_edit() of one edit: "" or why it is refused; `out` holds the checked copy.
std::string checked(std::int32_t code, std::string_view name, std::string_view value, std::size_t index, edit_op& out)
{
    asiosmtpd_edit e{};
    e.struct_size = sizeof e;
    e.op = code;
    e.name = str(name);
    e.value = str(value);
    e.index = index;
    return check_edit(e, out);
}

edit_op op(std::int32_t code, std::string_view name, std::string_view value = {}, std::size_t index = 0)
{
    edit_op out;
    EXPECT_EQ(checked(code, name, value, index, out), "") << name;
    return out;
}

std::string problem_of(std::int32_t code, std::string_view name, std::string_view value = {}, std::size_t index = 1)
{
    edit_op out;
    return checked(code, name, value, index, out);
}

// The whole draft, read in pieces of `piece` bytes.
std::string read_all(const draft& d, std::size_t piece)
{
    std::string out, error;
    for (std::uint64_t at = 0; at < d.size(); at += piece) EXPECT_TRUE(d.read(at, piece, out, error)) << error;
    return out;
}

std::string edited(std::string_view message, std::vector<edit_op> ops, const spool* held = nullptr)
{
    proto::envelope env;
    env.mail_from = "a@example.org";
    env.rcpt_tos = {"b@example.org"};
    draft d(env, held != nullptr ? std::string_view() : message, held, {});
    edit_batch b;
    for (auto& o : ops) record_edit(b, std::move(o), {});
    std::string error;
    EXPECT_TRUE(d.apply(std::move(b), error)) << error;
    const std::string whole = read_all(d, 7);
    EXPECT_EQ(whole, read_all(d, 1 << 20));
    std::string_view w;
    EXPECT_TRUE(d.whole(w, error));
    EXPECT_EQ(w, whole);
    return whole;
}

TEST(draft, header_edits_keep_folded_fields_and_the_body)
{
    const std::string msg = "Subject: a\r\n long fold\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody\r\n.\r\n";
    EXPECT_EQ(
        edited(msg,
               {op(ASIOSMTPD_EDIT_CHANGE_HEADER, "X-A", "two", 2), op(ASIOSMTPD_EDIT_DELETE_HEADER, "subject", {}, 1),
                op(ASIOSMTPD_EDIT_INSERT_HEADER, "Top", "t", 0), op(ASIOSMTPD_EDIT_INSERT_HEADER, "Far", "f", 99),
                op(ASIOSMTPD_EDIT_ADD_HEADER, "Folded", "x\n\ty")}),
        "Top: t\r\nX-A: 1\r\nx-a: two\r\nFar: f\r\nFolded: x\r\n\ty\r\n\r\nbody\r\n.\r\n");
}

TEST(draft, messages_without_a_body_or_without_a_header_block)
{
    EXPECT_EQ(edited("Subject: only", {op(ASIOSMTPD_EDIT_ADD_HEADER, "X", "1")}), "Subject: only\r\nX: 1\r\n");
    // The first line is no field: the header block is empty, the rest is kept.
    EXPECT_EQ(edited("not a header\r\nSubject: x\r\n", {op(ASIOSMTPD_EDIT_ADD_HEADER, "X", " 1")}),
              "X: 1\r\nnot a header\r\nSubject: x\r\n");
    EXPECT_EQ(edited("", {op(ASIOSMTPD_EDIT_ADD_HEADER, "X", "1")}), "X: 1\r\n");
    // Bare LF line ends are kept as they came; the new field has CRLF.
    EXPECT_EQ(edited("A: 1\nB: 2\n\nbody\n", {op(ASIOSMTPD_EDIT_ADD_HEADER, "C", "3")}),
              "A: 1\nB: 2\nC: 3\r\n\nbody\n");
}

TEST(draft, body_replacement_in_pieces_and_from_a_spool_file)
{
    spool held({0, ""});  // threshold 0: a file from the first byte
    std::string error;
    const std::string big = "Subject: big\r\n\r\n" + std::string(200000, 'x') + "\r\n";
    ASSERT_TRUE(held.append(big.substr(0, 1000), error)) << error;
    ASSERT_TRUE(held.append(big.substr(1000), error)) << error;
    EXPECT_TRUE(held.on_disk());
    EXPECT_EQ(edited(big, {op(ASIOSMTPD_EDIT_ADD_HEADER, "X", "1")}, &held),
              "Subject: big\r\nX: 1\r\n" + big.substr(14));
    EXPECT_EQ(edited(big,
                     {op(ASIOSMTPD_EDIT_REPLACE_BODY, {}, "new\r\n"), op(ASIOSMTPD_EDIT_REPLACE_BODY, {}, "two\r\n")},
                     &held),
              "Subject: big\r\n\r\nnew\r\ntwo\r\n");
    EXPECT_EQ(edited("S: 1\r\n", {op(ASIOSMTPD_EDIT_REPLACE_BODY, {}, "b\r\n")}), "S: 1\r\n\r\nb\r\n");
}

TEST(draft, envelope_edits)
{
    proto::envelope env;
    env.mail_from = "a@example.org";
    env.rcpt_tos = {"b@example.org", "c@example.org"};
    draft d(env, "S: 1\r\n\r\nx\r\n", nullptr, {});
    edit_batch b;
    record_edit(b, op(ASIOSMTPD_EDIT_CHANGE_SENDER, "<>"), {});
    record_edit(b, op(ASIOSMTPD_EDIT_DELETE_RCPT, "B@EXAMPLE.ORG"), {});
    record_edit(b, op(ASIOSMTPD_EDIT_ADD_RCPT, "<d@example.org>"), {});
    record_edit(b, op(ASIOSMTPD_EDIT_DELETE_RCPT, "nobody@example.org"), {});
    std::string error;
    ASSERT_TRUE(d.apply(std::move(b), error));
    EXPECT_EQ(d.mail_from(), "<>");
    ASSERT_EQ(d.rcpts().size(), 2u);
    EXPECT_EQ(d.rcpts()[0].address, "c@example.org");
    EXPECT_EQ(d.rcpts()[1].address, "d@example.org");
    EXPECT_FALSE(d.message_changed());
    EXPECT_EQ(read_all(d, 3), "S: 1\r\n\r\nx\r\n");
}

TEST(draft, malformed_edits_are_refused)
{
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_ADD_HEADER, "", "v"), "");
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_ADD_HEADER, "A:B", "v"), "");
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_ADD_HEADER, "A B", "v"), "");
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_ADD_HEADER, "X", "a\r\nBcc: x@y"), "");
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_ADD_HEADER, "X", "a\r\n"), "");
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_ADD_HEADER, "X", "a\rb"), "");
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_ADD_HEADER, "X", std::string_view("a\0b", 3)), "");
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_DELETE_HEADER, "X", {}, 0), "");
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_ADD_RCPT, ""), "");
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_ADD_RCPT, "no-at-sign"), "");
    EXPECT_NE(problem_of(ASIOSMTPD_EDIT_ADD_RCPT, "a@b\r\nRCPT TO:<x@y>"), "");
    EXPECT_NE(problem_of(42, "X"), "");
    EXPECT_EQ(problem_of(ASIOSMTPD_EDIT_ADD_RCPT, "Postmaster"), "");
    EXPECT_EQ(problem_of(ASIOSMTPD_EDIT_CHANGE_SENDER, ""), "");  // the null sender
}

}  // namespace
}  // namespace asiosmtpd::plugin
