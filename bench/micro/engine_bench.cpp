// SPDX-License-Identifier: Apache-2.0
// engine_bench: Google Benchmark microbenchmarks of the sans-I/O engine (issue 8), to show how
// much headroom the protocol engine leaves below the network: whole transactions on a reused
// connection, pipelined commands, DATA throughput with dot-stuffing, MAIL FROM parsing.
// No sockets, no threads, no I/O: bytes go in through prepare()/commit() exactly as the session
// feeds them, hooks are answered at once with "none", replies are dropped as if written.
// Each benchmark checks its replies once before timing and fails the run if they are wrong.
#include "proto/address.hpp"
#include "proto/engine.hpp"
#include "proto/replies.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

namespace {

using namespace asiosmtpd;

constexpr std::size_t kib = 1024;
constexpr std::size_t mib = 1024 * kib;

// Set when a benchmark found wrong replies: main() then exits non-zero (the ctest smoke test
// checks that every benchmark runs its intended path, not how fast).
bool replies_wrong = false;

void fail(benchmark::State& state, const std::string& what)
{
    replies_wrong = true;
    state.SkipWithError(what.c_str());
}

proto::settings make_settings(bool hooks)
{
    proto::settings s;
    s.hostname = "mx.bench.example";
    s.ident = "asiosmtpd bench";
    s.data_size_limit = 32 * mib;  // the default: a 10 MiB body fits
    // Hook chains on MAIL, RCPT and DATA (more than the sink plugin's DATA alone): each asks the
    // host, which answers at once.
    if (hooks)
        s.hook_mask = proto::hook_bit(proto::hook_kind::mail) | proto::hook_bit(proto::hook_kind::rcpt) |
                      proto::hook_bit(proto::hook_kind::data);
    return s;
}

// What the session does after every read: run the pending hooks (here: all say CONTINUE),
// take the transaction for the log line, write and clear the output.
void settle(proto::engine& e)
{
    while (e.pending_hook() != nullptr) e.hook_done(proto::hook_result{});
    auto t = e.take_transaction();
    benchmark::DoNotOptimize(t);
    benchmark::DoNotOptimize(e.output().data());
    e.clear_output();
}

// Feed `bytes` as reads of at most `chunk` bytes each, zero-copy as the session does
// (prepare(), the "socket" writes into the engine's buffer, commit()).
void feed(proto::engine& e, std::string_view bytes, std::size_t chunk)
{
    while (!bytes.empty()) {
        const std::size_t n = std::min(chunk, bytes.size());
        const std::span<char> room = e.prepare(n);
        std::memcpy(room.data(), bytes.data(), n);
        e.commit(n);
        bytes.remove_prefix(n);
        settle(e);
    }
}

// Like feed(), but keeps the replies (for the one check before timing), and the size of the
// message the DATA hook saw (unstuffed), if it ran.
std::string feed_and_collect(proto::engine& e, std::string_view bytes, std::size_t chunk,
                             std::size_t* content_size = nullptr)
{
    std::string replies;
    while (!bytes.empty()) {
        const std::size_t n = std::min(chunk, bytes.size());
        const std::span<char> room = e.prepare(n);
        std::memcpy(room.data(), bytes.data(), n);
        e.commit(n);
        bytes.remove_prefix(n);
        while (const proto::hook_request* h = e.pending_hook()) {
            if (h->kind == proto::hook_kind::data && content_size != nullptr) *content_size = h->content.size();
            e.hook_done(proto::hook_result{});
        }
        replies += e.output();
        e.clear_output();
    }
    return replies;
}

std::string line(std::string_view reply) { return std::string(reply) + "\r\n"; }

// A started engine whose client said EHLO (the session that is then reused).
void greet(proto::engine& e)
{
    e.start();
    e.clear_output();
    feed(e, "EHLO client.bench.example\r\n", 64 * kib);
}

// A message body of `size` bytes (CRLF lines of `line_len` bytes, CRLF included; the last line
// may be shorter), as it goes on the wire: every 40th line starts with a dot, stuffed ("..").
// Printable text that varies from line to line, so no line is a trivial repeat.
std::string make_body(std::size_t size, std::size_t line_len)
{
    static constexpr std::string_view text =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt "
        "ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco ";
    std::string body;
    body.reserve(size);
    for (std::size_t n = 0; body.size() < size; ++n) {
        std::size_t len = size - body.size();
        if (len > line_len) len = std::min(line_len, len - 3);  // the last line keeps >= 3 bytes
        std::size_t i = 0;
        if (n % 40 == 7) {
            body.append("..");
            i = 2;
        }
        for (; i + 2 < len; ++i) {
            const char c = text[(n * 7 + i) % text.size()];
            body.push_back(i == 0 && c == '.' ? '-' : c);  // only the stuffed lines start with a dot
        }
        body.append("\r\n");
    }
    return body;
}

constexpr std::string_view envelope_cmds = "MAIL FROM:<sender@example.org>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n";

// ---------------------------------------------------------------------------------------------
// (1) Whole transactions on one connection: MAIL, RCPT, DATA, a 1 KiB body and the dot.
// Arg 0: a non-pipelining client (smtp-source): 4 reads, one per reply. Arg 1: PIPELINING,
// the envelope in one read, the body in the next (RFC 2920 §3.1: DATA ends a group).
// Arg 1 of the second range: hooks (mail, rcpt, data) answered "none" at once, or no hooks.
// ---------------------------------------------------------------------------------------------
void bm_transaction(benchmark::State& state)
{
    const bool pipelined = state.range(0) != 0;
    const proto::settings s = make_settings(state.range(1) != 0);
    proto::engine e(s);
    greet(e);
    const std::string mail = "MAIL FROM:<sender@example.org>\r\n";
    const std::string rcpt = "RCPT TO:<rcpt@example.net>\r\n";
    const std::string data = "DATA\r\n";
    const std::string envelope = mail + rcpt + data;
    const std::string body = make_body(1 * kib, 78) + ".\r\n";

    const std::string expected = line(proto::replies::ok) + line(proto::replies::ok) +
                                 line(proto::replies::start_data) + line(proto::replies::ok);
    std::string got = feed_and_collect(e, envelope, 64 * kib);  // two statements: in this order
    got += feed_and_collect(e, body, 64 * kib);
    if (got != expected) return fail(state, "unexpected replies: " + got.substr(0, 200));

    for (auto _ : state) {
        if (pipelined) {
            feed(e, envelope, 64 * kib);
        } else {
            feed(e, mail, 64 * kib);
            feed(e, rcpt, 64 * kib);
            feed(e, data, 64 * kib);
        }
        feed(e, body, 64 * kib);
    }
    if (e.transactions() < static_cast<std::uint64_t>(state.iterations()))
        return fail(state, "transactions were not accepted");
    const auto n = static_cast<double>(state.iterations());
    state.counters["txn"] = benchmark::Counter(n, benchmark::Counter::kIsRate);
    // MAIL, RCPT, DATA and the final dot: four replies per transaction.
    state.counters["cmd"] = benchmark::Counter(4 * n, benchmark::Counter::kIsRate);
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(envelope.size() + body.size()));
}
BENCHMARK(bm_transaction)->ArgNames({"pipelined", "hooks"})->ArgsProduct({{0, 1}, {0, 1}});

// ---------------------------------------------------------------------------------------------
// (2) Pipelined commands: N NOOPs in one read, N replies out.
// ---------------------------------------------------------------------------------------------
void bm_pipelined_noop(benchmark::State& state)
{
    const auto count = static_cast<std::size_t>(state.range(0));
    const proto::settings s = make_settings(false);
    proto::engine e(s);
    greet(e);
    std::string batch;
    for (std::size_t i = 0; i < count; ++i) batch += "NOOP\r\n";

    std::string expected;
    for (std::size_t i = 0; i < count; ++i) expected += line(proto::replies::ok);
    if (feed_and_collect(e, batch, batch.size()) != expected) return fail(state, "unexpected NOOP replies");

    for (auto _ : state) feed(e, batch, batch.size());
    state.counters["cmd"] = benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(count),
                                               benchmark::Counter::kIsRate);
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(batch.size()));
}
BENCHMARK(bm_pipelined_noop)->ArgName("n")->Arg(1)->Arg(16)->Arg(256)->Arg(4096);

// ---------------------------------------------------------------------------------------------
// (3) DATA throughput: a 10 MiB message read in chunks of 64 KiB or 256 KiB (the session's
// read sizes grow to 256 KiB during a transfer), text lines of 78 bytes (mail as it is) or
// 998 bytes (the RFC 5321 maximum, fewer lines per byte), one line in 40 dot-stuffed; and once
// with decode_data (aiosmtpd's strict-ASCII check of the whole message after the dot).
// Bytes/s counts the body on the wire. Each iteration is one whole transaction.
// ---------------------------------------------------------------------------------------------
const std::string& body_10mib(std::size_t line_len)
{
    static const std::string short_lines = make_body(10 * mib, 78) + ".\r\n";
    static const std::string long_lines = make_body(10 * mib, 998) + ".\r\n";
    return line_len == 78 ? short_lines : long_lines;
}

void bm_data(benchmark::State& state)
{
    const auto chunk = static_cast<std::size_t>(state.range(0)) * kib;
    const auto line_len = static_cast<std::size_t>(state.range(1));
    proto::settings s = make_settings(true);
    s.decode_data = state.range(2) != 0;
    proto::engine e(s);
    greet(e);
    const std::string& body = body_10mib(line_len);

    const std::string expected = line(proto::replies::ok) + line(proto::replies::ok) +
                                 line(proto::replies::start_data) + line(proto::replies::ok);
    std::string got = feed_and_collect(e, envelope_cmds, 64 * kib);
    std::size_t content_size = 0;
    got += feed_and_collect(e, body, chunk, &content_size);
    if (got != expected) return fail(state, "unexpected replies: " + got.substr(0, 200));
    // The message as delivered: without the final ".\r\n" and one dot per stuffed line.
    std::size_t stuffed = body.starts_with("..") ? 1 : 0;
    for (std::size_t at = body.find("\n.."); at != std::string::npos; at = body.find("\n..", at + 1)) ++stuffed;
    if (content_size != body.size() - 3 - stuffed)
        return fail(state, "the DATA hook saw " + std::to_string(content_size) + " bytes, expected " +
                               std::to_string(body.size() - 3 - stuffed));

    for (auto _ : state) {
        feed(e, envelope_cmds, 64 * kib);
        feed(e, body, chunk);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(body.size()));
}
BENCHMARK(bm_data)
    ->ArgNames({"chunk_kib", "line", "decode"})
    ->ArgsProduct({{64, 256}, {78, 998}, {0}})
    ->Args({256, 78, 1})
    ->Unit(benchmark::kMillisecond);

// The floor for (3): the two copies a DATA byte needs at least (socket buffer -> engine buffer,
// engine buffer -> envelope content), no scanning. engine bytes/s over this = engine efficiency.
void bm_data_copy_floor(benchmark::State& state)
{
    const auto chunk = static_cast<std::size_t>(state.range(0)) * kib;
    const std::string& body = body_10mib(78);
    std::string in(chunk, '\0');
    std::string content;
    for (auto _ : state) {
        content.clear();
        for (std::size_t at = 0; at < body.size(); at += chunk) {
            const std::size_t n = std::min(chunk, body.size() - at);
            std::memcpy(in.data(), body.data() + at, n);
            benchmark::ClobberMemory();
            content.append(in.data(), n);
        }
        benchmark::DoNotOptimize(content.data());
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(body.size()));
}
BENCHMARK(bm_data_copy_floor)->ArgName("chunk_kib")->Arg(64)->Arg(256)->Unit(benchmark::kMillisecond);

// ---------------------------------------------------------------------------------------------
// (4) MAIL FROM parsing. Through the engine: a MAIL line and an RSET in one read (2 commands),
// with a typical address, with SIZE= and BODY= parameters, and with a quoted local part (the
// full RFC 5322 parser instead of the fast path). Then parse_address() alone on the same text.
// ---------------------------------------------------------------------------------------------
constexpr std::array mail_args{
    std::string_view{"<jane.doe@example.org>"},
    std::string_view{"<jane.doe@example.org> SIZE=1048576 BODY=8BITMIME"},
    std::string_view{"<\"jane doe\"@example.org>"},
};

void bm_mail_from(benchmark::State& state)
{
    const auto arg = mail_args.at(static_cast<std::size_t>(state.range(0)));
    const proto::settings s = make_settings(false);
    proto::engine e(s);
    greet(e);
    const std::string batch = "MAIL FROM:" + std::string(arg) + "\r\nRSET\r\n";

    const std::string expected = line(proto::replies::ok) + line(proto::replies::ok);
    if (feed_and_collect(e, batch, batch.size()) != expected) return fail(state, "unexpected MAIL replies");

    for (auto _ : state) feed(e, batch, batch.size());
    state.counters["cmd"] =
        benchmark::Counter(2 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(bm_mail_from)->ArgName("arg")->DenseRange(0, static_cast<int>(mail_args.size()) - 1);

void bm_parse_address(benchmark::State& state)
{
    const auto arg = mail_args.at(static_cast<std::size_t>(state.range(0)));
    if (proto::parse_address(arg, false).state != proto::address_result::status::ok)
        return fail(state, "address not parsed");
    for (auto _ : state) {
        auto r = proto::parse_address(arg, false);
        benchmark::DoNotOptimize(r);
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(bm_parse_address)->ArgName("arg")->DenseRange(0, static_cast<int>(mail_args.size()) - 1);

}  // namespace

int main(int argc, char** argv)
{
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::AddCustomContext("asiosmtpd_build_type", ASIOSMTPD_BENCH_BUILD_TYPE);
    for (std::size_t i = 0; i < mail_args.size(); ++i)
        benchmark::AddCustomContext("mail_from_arg_" + std::to_string(i), std::string(mail_args.at(i)));
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    if (replies_wrong) {
        std::fputs("engine_bench: a benchmark saw wrong replies (see ERROR OCCURRED above)\n", stderr);
        return 1;
    }
    return 0;
}
