// SPDX-License-Identifier: Apache-2.0
// ABI 1.3 through the test kit (the server's engine and hook chain): message editing (headers,
// body, sender, recipients; from the hook and from a worker thread; who sees the edits and who
// does not; refused edits), DATA_CHUNK plugins after an editor (the edited message in pieces,
// held in memory or in a file), and TXN_END (every outcome, the transaction slot still there).
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
const std::string editor = std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/editor.so";
const std::string scripted = std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/scripted.so";

using entries = std::initializer_list<std::pair<std::string, tk::node>>;

tk::node edit(entries e) { return tk::node::map(e); }

// The log lines of the kit that contain "<tag> ", from there on (without the tag).
std::vector<std::string> tagged(const tk::host& h, const std::string& tag)
{
    std::vector<std::string> out;
    for (const std::string& line : h.logs()) {
        const std::size_t at = line.find(" " + tag + " ");
        if (at != std::string::npos) out.push_back(line.substr(at + tag.size() + 2));
    }
    return out;
}

// As the editor fixture shows content: CR ^M, LF ^J; over 1000 bytes its FNV-1a hash.
std::string escaped(std::string_view s)
{
    if (s.size() > 1000) {
        std::uint64_t h = 14695981039346656037ull;
        for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
        return "fnv:" + std::to_string(h);
    }
    std::string out;
    for (char c : s) {
        if (c == '\r') out += "^M";
        else if (c == '\n') out += "^J";
        else out.push_back(c);
    }
    return out;
}

const std::string original = "Subject: old\r\nX-Old: 1\r\nFrom: a@example.org\r\nX-Old: 2\r\n\r\nbody line\r\n";

tk::node header_edits()
{
    return tk::node::list({
        edit({{"op", "add_header"}, {"name", "X-Added"}, {"value", "at the end"}}),
        edit({{"op", "insert_header"}, {"index", "0"}, {"name", "X-Top"}, {"value", "first"}}),
        edit({{"op", "change_header"}, {"name", "subject"}, {"index", "1"}, {"value", "new"}}),
        edit({{"op", "delete_header"}, {"name", "X-Old"}, {"index", "2"}}),
        edit({{"op", "change_header"}, {"name", "X-Missing"}, {"index", "1"}, {"value", "added"}}),
        edit({{"op", "delete_header"}, {"name", "X-None"}, {"index", "1"}}),
    });
}

TEST(testkit_editing, headers_are_edited_for_the_plugins_after_the_editor_only)
{
    tk::host h;
    h.load(editor, tk::node::map({{"tag", "OBS1"}, {"observe", "true"}}));
    h.load(editor, tk::node::map({{"tag", "ED"}, {"edits", header_edits()}, {"observe", "true"}}));
    h.load(editor, tk::node::map({{"tag", "OBS2"}, {"observe", "true"}}));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@example.org", {"b@example.org"}, original), "250 OK");
    const std::string client =
        "from=a@example.org params= rcpts=b@example.org size=" + std::to_string(original.size()) +
        " streamed=0 content=" + escaped(original);
    EXPECT_EQ(tagged(h, "OBS1"), std::vector<std::string>{"sees " + client});
    // The editor sees the message as the client sent it; its edits are for those after it.
    const auto ed = tagged(h, "ED");
    ASSERT_EQ(ed.size(), 7u);
    EXPECT_EQ(ed[0], "sees " + client);
    for (std::size_t i = 1; i < ed.size(); ++i) EXPECT_EQ(ed[i].substr(ed[i].size() - 4), ": OK") << ed[i];
    const std::string edited = "X-Top: first\r\nSubject: new\r\nX-Old: 1\r\nFrom: a@example.org\r\n"
                               "X-Added: at the end\r\nX-Missing: added\r\n\r\nbody line\r\n";
    EXPECT_EQ(tagged(h, "OBS2"),
              std::vector<std::string>{"sees from=a@example.org params= rcpts=b@example.org size=" +
                                       std::to_string(edited.size()) + " streamed=0 content=" + escaped(edited)});
}

TEST(testkit_editing, body_sender_and_recipients_from_a_worker_thread)
{
    tk::host h;
    h.load(editor,
           tk::node::map({{"tag", "ED"},
                          {"worker", "true"},
                          {"edits", tk::node::list({
                                        edit({{"op", "replace_body"},
                                              {"pieces", tk::node::list({"new body\r\n", "in two pieces\r\n"})}}),
                                        edit({{"op", "change_sender"},
                                              {"address", "<bounce@example.net>"},
                                              {"params", tk::node::list({"BODY=8BITMIME"})}}),
                                        edit({{"op", "add_rcpt"},
                                              {"address", "c@example.org"},
                                              {"params", tk::node::list({"NOTIFY=NEVER", "ORCPT=rfc822;c@x"})}}),
                                        edit({{"op", "delete_rcpt"}, {"address", "B@Example.org"}}),
                                    })}}));
    h.load(editor, tk::node::map({{"tag", "OBS2"}, {"observe", "true"}}));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@example.org", {"b@example.org", "d@example.org"}, original), "250 OK");
    const std::string edited =
        "Subject: old\r\nX-Old: 1\r\nFrom: a@example.org\r\nX-Old: 2\r\n\r\nnew body\r\nin two pieces\r\n";
    EXPECT_EQ(tagged(h, "OBS2"),
              std::vector<std::string>{"sees from=bounce@example.net params=BODY=8BITMIME "
                                       "rcpts=d@example.org|c@example.org;NOTIFY=NEVER,ORCPT=rfc822;c@x size=" +
                                       std::to_string(edited.size()) + " streamed=0 content=" + escaped(edited)});
    // The client's transaction is unchanged: a second message starts from its own envelope.
    EXPECT_EQ(s.send_mail("x@example.org", {"y@example.org"}, "Subject: 2\r\n\r\nz\r\n"), "250 OK");
    const std::string second = "Subject: 2\r\n\r\nnew body\r\nin two pieces\r\n";
    EXPECT_EQ(tagged(h, "OBS2").back(), "sees from=bounce@example.net params=BODY=8BITMIME "
                                        "rcpts=y@example.org|c@example.org;NOTIFY=NEVER,ORCPT=rfc822;c@x size=" +
                                            std::to_string(second.size()) + " streamed=0 content=" + escaped(second));
}

TEST(testkit_editing, malformed_or_undeclared_edits_are_refused_and_change_nothing)
{
    tk::host h;
    h.load(editor,
           tk::node::map({{"tag", "UNDECL"},
                          {"declare", "false"},
                          {"edits", tk::node::list({edit({{"op", "add_header"}, {"name", "X"}, {"value", "1"}})})}}));
    h.load(
        editor,
        tk::node::map(
            {{"tag", "ED"},
             {"edits", tk::node::list({
                           edit({{"op", "add_header"}, {"name", "Bad Name"}, {"value", "1"}}),
                           edit({{"op", "add_header"}, {"name", "X-Inject"}, {"value", "a\r\nBcc: evil@example.org"}}),
                           edit({{"op", "add_header"}, {"name", "X-Fold"}, {"value", "a\n b"}}),
                           edit({{"op", "change_header"}, {"name", "Subject"}, {"index", "0"}, {"value", "x"}}),
                           edit({{"op", "add_rcpt"}, {"address", "not an address"}}),
                           edit({{"op", "change_sender"}, {"address", "a@b"}, {"params", tk::node::list({"=x"})}}),
                       })}}));
    h.load(editor, tk::node::map({{"tag", "OBS2"}, {"observe", "true"}}));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@example.org", {"b@example.org"}, "Subject: s\r\n\r\nb\r\n"), "250 OK");
    EXPECT_EQ(tagged(h, "UNDECL"), std::vector<std::string>{"edit add_header: E_STATE"});
    EXPECT_EQ(tagged(h, "ED"), (std::vector<std::string>{"edit add_header: E_INVALID", "edit add_header: E_INVALID",
                                                         "edit add_header: OK", "edit change_header: E_INVALID",
                                                         "edit add_rcpt: E_INVALID", "edit change_sender: E_INVALID"}));
    // Only the fold got through (with CRLF).
    EXPECT_EQ(tagged(h, "OBS2"), std::vector<std::string>{"sees from=a@example.org params= rcpts=b@example.org "
                                                          "size=32 streamed=0 content=Subject: s^M^JX-Fold: "
                                                          "a^M^J b^M^J^M^Jb^M^J"});
}

TEST(testkit_editing, a_refusing_editor_s_edits_are_dropped_and_lmtp_recipients_cannot_change)
{
    tk::host h;
    h.lmtp = true;
    h.load(editor,
           tk::node::map({{"tag", "ED"},
                          {"edits", tk::node::list({edit({{"op", "add_rcpt"}, {"address", "c@example.org"}}),
                                                    edit({{"op", "add_header"}, {"name", "X"}, {"value", "1"}})})}}));
    h.load(editor, tk::node::map({{"tag", "OBS2"}, {"observe", "true"}}));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@example.org", {"b@example.org"}, "S: s\r\n\r\nb\r\n"), "250 OK");
    EXPECT_EQ(tagged(h, "ED"), (std::vector<std::string>{"edit add_rcpt: E_STATE", "edit add_header: OK"}));
    EXPECT_EQ(tagged(h, "OBS2"),
              std::vector<std::string>{"sees from=a@example.org params= rcpts=b@example.org size=17 streamed=0 "
                                       "content=S: s^M^JX: 1^M^J^M^Jb^M^J"});
}

// `lines` CRLF lines of 100 bytes.
std::string big_message(std::size_t lines)
{
    std::string out = "Subject: big\r\n\r\n";
    for (std::size_t i = 0; i < lines; ++i) out += std::string(98, static_cast<char>('a' + i % 26)) + "\r\n";
    return out;
}

class chunks_after_an_editor : public ::testing::TestWithParam<std::uint64_t> {};

// A DATA_CHUNK plugin before the editor gets the client's pieces live; one after it gets the
// edited message in pieces before its DATA hook, held in memory or (threshold 0) in a file.
TEST_P(chunks_after_an_editor, get_the_edited_message_in_pieces)
{
    tk::host h;
    h.spool_threshold = GetParam();
    h.load(editor, tk::node::map({{"tag", "OBS1"}, {"observe", "true"}, {"chunks", "true"}}));
    h.load(editor,
           tk::node::map(
               {{"tag", "ED"},
                {"chunks", "true"},
                {"edits", tk::node::list({edit(
                              {{"op", "insert_header"}, {"index", "0"}, {"name", "X-Signed"}, {"value", "yes"}})})}}));
    h.load(editor, tk::node::map({{"tag", "OBS2"}, {"observe", "true"}, {"chunks", "true"}}));
    auto s = h.open();
    const std::string msg = big_message(1500);  // 150 KiB: three pieces
    EXPECT_EQ(s.send_mail("a@example.org", {"b@example.org"}, msg), "250 OK");
    const std::string edited = "X-Signed: yes\r\n" + msg;
    const auto before = tagged(h, "OBS1");
    ASSERT_EQ(before.size(), 2u);
    EXPECT_EQ(before[0], "sees from=a@example.org params= rcpts=b@example.org size=" + std::to_string(msg.size()) +
                             " streamed=1 content=-");
    EXPECT_EQ(before[1], "chunks n=3 bytes=" + std::to_string(msg.size()) + " content=" + escaped(msg));
    const auto after = tagged(h, "OBS2");
    ASSERT_EQ(after.size(), 2u);
    EXPECT_EQ(after[0], "sees from=a@example.org params= rcpts=b@example.org size=" + std::to_string(edited.size()) +
                            " streamed=1 content=-");
    EXPECT_EQ(after[1], "chunks n=3 bytes=" + std::to_string(edited.size()) + " content=" + escaped(edited));
}

INSTANTIATE_TEST_SUITE_P(spool, chunks_after_an_editor, ::testing::Values(0u, 1024u * 1024u));

TEST(testkit_editing, an_unwritable_spool_refuses_the_message_with_451)
{
    tk::host h;
    h.spool_threshold = 0;
    h.spool_directory = "/nonexistent/asiosmtpd-spool";
    h.load(editor,
           tk::node::map({{"tag", "ED"},
                          {"chunks", "true"},
                          {"edits", tk::node::list({edit({{"op", "add_header"}, {"name", "X"}, {"value", "1"}})})}}));
    h.load(editor, tk::node::map({{"tag", "OBS2"}, {"observe", "true"}, {"chunks", "true"}}));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@example.org", {"b@example.org"}, "S: 1\r\n\r\nb\r\n"), "451 4.3.0 Error: internal");
    EXPECT_TRUE(h.logged("event=host_error hook=DATA_CHUNK"));
    EXPECT_TRUE(tagged(h, "OBS2").empty());
}

TEST(testkit_txn_end, every_outcome_once_with_the_transaction_slot_still_there)
{
    tk::host h;
    h.data_size_limit = 100;
    h.load(scripted, tk::node::map({{"hooks", tk::node::map({{"RCPT", tk::node::map({{"log", "rcpt {arg}"}})},
                                                             {"DATA", tk::node::map({{"verdict", "reject"}})}})}}));
    h.load(editor, tk::node::map({{"tag", "TXN"}, {"txn_end", "true"}}));
    {
        auto s = h.open();
        EXPECT_EQ(s.cmd("EHLO c.example").substr(0, 3), "250");
        EXPECT_EQ(s.cmd("MAIL FROM:<a@example.org>"), "250 OK");
        EXPECT_EQ(s.cmd("RCPT TO:<b@example.org>"), "250 OK");
        EXPECT_EQ(s.data("Subject: x\r\n\r\nhi\r\n"), "550 5.7.1 Rejected");
        EXPECT_EQ(s.cmd("MAIL FROM:<>"), "250 OK");
        EXPECT_EQ(s.cmd("RSET"), "250 OK");
        EXPECT_EQ(s.cmd("RSET"), "250 OK");  // no transaction: nothing
        EXPECT_EQ(s.cmd("MAIL FROM:<a@example.org>"), "250 OK");
        EXPECT_EQ(s.cmd("RCPT TO:<b@example.org>"), "250 OK");
        EXPECT_EQ(s.data(std::string(200, 'x')), "552 Error: Too much mail data");
        EXPECT_EQ(s.cmd("MAIL FROM:<q@example.org>"), "250 OK");
        EXPECT_EQ(s.cmd("QUIT"), "221 Bye");
    }
    {
        auto s = h.open();
        EXPECT_EQ(s.cmd("HELO c.example").substr(0, 3), "250");
        EXPECT_EQ(s.cmd("MAIL FROM:<gone@example.org>"), "250 OK");
        EXPECT_EQ(s.cmd("HELO again.example").substr(0, 3), "250");
        EXPECT_EQ(s.cmd("MAIL FROM:<gone@example.org>"), "250 OK");
        s.close();
    }
    EXPECT_EQ(
        tagged(h, "TXN"),
        (std::vector<std::string>{
            "txn_end outcome=2 code=550 reply=550 5.7.1 Rejected reason= from=a@example.org rcpts=1 size=18 slot=1",
            "txn_end outcome=3 code=0 reply= reason=rset from=<> rcpts=0 size=0 slot=1",
            "txn_end outcome=2 code=552 reply=552 Error: Too much mail data reason= from=a@example.org rcpts=1 "
            "size=202 slot=1",
            "txn_end outcome=3 code=0 reply= reason=quit from=q@example.org rcpts=0 size=0 slot=1",
            "txn_end outcome=3 code=0 reply= reason=helo from=gone@example.org rcpts=0 size=0 slot=1",
            "txn_end outcome=3 code=0 reply= reason=disconnect from=gone@example.org rcpts=0 size=0 slot=1",
        }));
}

TEST(testkit_log_fields, key_value_fields_are_quoted_and_escaped_by_the_host)
{
    tk::host h;
    h.load(editor, tk::node::map({{"tag", "TXN"}, {"txn_end", "true"}}));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@example.org", {"b@example.org"}, "S: 1\r\n\r\nb\r\n"), "250 OK");
    EXPECT_TRUE(h.logged("plugin=editor txn_end_fields tag=TXN reply=\"250 OK\" reason=\"\" field=x\\x22y"));
}

TEST(testkit_keep_state, instances_share_the_kept_object_until_the_last_one_goes)
{
    const auto run = [](tk::host& h) {
        auto s = h.open();
        EXPECT_EQ(s.send_mail("a@example.org", {"b@example.org"}, "S: 1\r\n\r\nb\r\n"), "250 OK");
        return tagged(h, "K").back();
    };
    {
        tk::host old_generation;
        old_generation.load(editor, tk::node::map({{"tag", "K"}, {"shared", "counter.v1"}}));
        EXPECT_EQ(run(old_generation), "shared count=1");
        {
            // A reload: new instances while the old ones still run; both count in one object.
            tk::host new_generation;
            new_generation.load(editor, tk::node::map({{"tag", "K"}, {"shared", "counter.v1"}}));
            EXPECT_EQ(run(new_generation), "shared count=2");
            EXPECT_EQ(run(old_generation), "shared count=3");
            // Another key is another object.
            tk::host other;
            other.load(editor, tk::node::map({{"tag", "K"}, {"shared", "other.v1"}}));
            EXPECT_EQ(run(other), "shared count=1");
        }
        EXPECT_EQ(run(old_generation), "shared count=4");
    }
    // Every instance that held it is gone: the object was released; a new one starts afresh.
    tk::host later;
    later.load(editor, tk::node::map({{"tag", "K"}, {"shared", "counter.v1"}}));
    EXPECT_EQ(run(later), "shared count=1");
    // A bad key is refused at load.
    tk::host bad;
    EXPECT_THROW(bad.load(editor, tk::node::map({{"tag", "K"}, {"shared", "bad key"}})), tk::error);
}

TEST(testkit_txn_end, an_accepted_message)
{
    tk::host h;
    h.load(editor, tk::node::map({{"tag", "TXN"}, {"txn_end", "true"}}));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@example.org", {"b@example.org", "c@example.org"}, "S: 1\r\n\r\nb\r\n"), "250 OK");
    EXPECT_EQ(tagged(h, "TXN"), std::vector<std::string>{"txn_end outcome=1 code=250 reply=250 OK reason= "
                                                         "from=a@example.org rcpts=2 size=11 slot=1"});
}

}  // namespace
