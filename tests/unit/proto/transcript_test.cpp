// SPDX-License-Identifier: Apache-2.0
// Replays every golden conversation in tests/transcripts/*.txt through the engine, with the
// client bytes split at every chunk size from 1 byte up (llhttp's scan), and requires the
// exact same replies each time. Format: tests/transcripts/README.md.
#include "proto/engine.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace asiosmtpd::proto {
namespace {

namespace fs = std::filesystem;

struct transcript {
    std::string name;
    settings config;
    std::string client;
    std::string server;
    bool closes = false;
};

std::string unescape(std::string_view s)
{
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '\\' || i + 1 == s.size()) {
            out.push_back(s[i]);
            continue;
        }
        const char c = s[++i];
        switch (c) {
        case 'r': out.push_back('\r'); break;
        case 'n': out.push_back('\n'); break;
        case 't': out.push_back('\t'); break;
        case '\\': out.push_back('\\'); break;
        case 'x':
            out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
            i += 2;
            break;
        default: out.push_back('\\'); out.push_back(c);
        }
    }
    return out;
}

bool truthy(const std::string& v) { return v == "true" || v == "1" || v == "yes"; }

// command_call_limit: 3, or {"NOOP": 2, "*": 3}
void parse_call_limit(const std::string& v, settings& s)
{
    if (v == "null" || v.empty()) return;
    s.call_limit_enabled = true;
    if (v.front() != '{') {
        s.call_limit_default = static_cast<std::uint32_t>(std::stoul(v));
        return;
    }
    std::string body = v.substr(1, v.size() - 2);
    std::stringstream ss(body);
    std::string item;
    while (std::getline(ss, item, ',')) {
        const auto colon = item.find(':');
        std::string key = item.substr(0, colon);
        key.erase(std::remove_if(key.begin(), key.end(), [](char c) { return c == '"' || c == ' ' || c == '\''; }),
                  key.end());
        const auto value = static_cast<std::uint32_t>(std::stoul(item.substr(colon + 1)));
        if (key == "*") s.call_limit_default = value;
        else s.call_limits[key] = value;
    }
}

transcript load(const fs::path& file)
{
    transcript t;
    t.name = file.filename().string();
    t.config.hostname = "mx.test";
    t.config.ident = "asiosmtpd test";
    std::ifstream in(file, std::ios::binary);
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty() || line[0] == '#') continue;
        if (line.rfind("! ", 0) == 0) {
            const auto colon = line.find(':');
            const std::string key = line.substr(2, colon - 2);
            std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
            value.erase(0, value.find_first_not_of(' '));
            value.erase(value.find_last_not_of(' ') + 1);
            if (key == "hostname") t.config.hostname = value;
            else if (key == "ident") t.config.ident = value;
            else if (key == "data_size_limit") t.config.data_size_limit = std::stoull(value);
            else if (key == "command_size_limit") t.config.command_size_limit = std::stoull(value);
            else if (key == "enable_smtputf8") t.config.enable_smtputf8 = truthy(value);
            else if (key == "decode_data") t.config.decode_data = truthy(value);
            else if (key == "advertise_pipelining") t.config.advertise_pipelining = truthy(value);
            else if (key == "lmtp") t.config.lmtp = truthy(value);
            else if (key == "starttls") t.config.starttls_available = truthy(value);
            else if (key == "require_starttls") t.config.require_starttls = truthy(value);
            else if (key == "auth_require_tls") t.config.auth_require_tls = truthy(value);
            else if (key == "auth_required") t.config.auth_required = truthy(value);
            else if (key == "auth_max_failures")
                t.config.auth_max_failures = static_cast<std::uint32_t>(std::stoul(value));
            else if (key == "command_call_limit") parse_call_limit(value, t.config);
            else if (key == "aiosmtpd") continue;
            else ADD_FAILURE() << file << ": unknown setting " << key;
            continue;
        }
        const std::string_view tag = std::string_view(line).substr(0, 2);
        const std::string_view rest = line.size() > 3 ? std::string_view(line).substr(3) : std::string_view{};
        if (tag == "S:") t.server += unescape(rest) + "\r\n";
        else if (tag == "C:") t.client += unescape(rest) + "\r\n";
        else if (tag == "R:") t.client += unescape(rest);
        else if (tag == "X:") t.closes = true;
        else ADD_FAILURE() << file << ": bad line: " << line;
    }
    return t;
}

struct run_result {
    std::string replies;
    bool closed = false;
};

run_result run_chunked(const transcript& t, std::size_t chunk)
{
    engine e(t.config);
    run_result r;
    e.start();
    auto drain = [&] {
        // Transcripts run with no plugins; no hook can be pending, but be safe.
        while (e.pending_hook()) e.hook_done({});
        r.replies += e.output();
        e.clear_output();
    };
    drain();
    for (std::size_t at = 0; at < t.client.size() && !e.close_requested(); at += chunk) {
        e.receive(std::string_view(t.client).substr(at, chunk));
        drain();
    }
    r.closed = e.close_requested();
    return r;
}

std::vector<fs::path> transcript_files()
{
    std::vector<fs::path> files;
    const fs::path dir = fs::path(ASIOSMTPD_TEST_DATA_DIR) / "transcripts";
    if (fs::exists(dir))
        for (const auto& f : fs::directory_iterator(dir))
            if (f.path().extension() == ".txt") files.push_back(f.path());
    std::sort(files.begin(), files.end());
    return files;
}

class transcripts : public ::testing::TestWithParam<fs::path> {};

TEST_P(transcripts, replies_are_exact_at_every_chunk_size)
{
    const transcript t = load(GetParam());
    ASSERT_FALSE(t.server.empty()) << "a transcript states the replies it expects";
    const run_result whole = run_chunked(t, t.client.size() + 1);
    EXPECT_EQ(whole.replies, t.server);
    EXPECT_EQ(whole.closed, t.closes) << "connection close";
    for (std::size_t chunk = 1; chunk <= t.client.size(); ++chunk) {
        const run_result r = run_chunked(t, chunk);
        ASSERT_EQ(r.replies, t.server) << "chunk=" << chunk;
        ASSERT_EQ(r.closed, t.closes) << "chunk=" << chunk;
    }
}

std::string test_name(const ::testing::TestParamInfo<fs::path>& info)
{
    std::string n = info.param.stem().string();
    for (char& c : n)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    return n;
}

INSTANTIATE_TEST_SUITE_P(golden, transcripts, ::testing::ValuesIn(transcript_files()), test_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(transcripts);

}  // namespace
}  // namespace asiosmtpd::proto
