// SPDX-License-Identifier: Apache-2.0
// kit_replay: one client byte stream through the SDK test kit, for test_kit_vs_server.py.
//
//   kit_replay [--plugin FILE] [key=value ...] < client-bytes > reply-bytes
//
// Settings are the kit host's (testkit.hpp), named like the server's config keys: hostname,
// ident, data_size_limit, command_size_limit, enable_smtputf8, decode_data,
// advertise_pipelining, lmtp, starttls_available, require_starttls, auth_require_tls,
// auth_required, auth_max_failures, call_limit_default=N (turns command_call_limit on) and
// call_limit=VERB:N. All bytes go in at once (as one pipelined write); the replies come out
// with CRLF line ends, as the server writes them. The last line on stderr says whether the
// session closed: "closed=1" or "closed=0".
#include <asiosmtpd/testkit.hpp>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <string>

namespace {

namespace tk = asiosmtpd::testkit;

bool flag(const std::string& v) { return v == "true" || v == "1" || v == "yes" || v == "on"; }

void set(tk::host& h, const std::string& key, const std::string& v)
{
    if (key == "hostname") h.hostname = v;
    else if (key == "ident") h.ident = v;
    else if (key == "data_size_limit") h.data_size_limit = std::stoull(v);
    else if (key == "command_size_limit") h.command_size_limit = std::stoull(v);
    else if (key == "enable_smtputf8") h.enable_smtputf8 = flag(v);
    else if (key == "decode_data") h.decode_data = flag(v);
    else if (key == "advertise_pipelining") h.advertise_pipelining = flag(v);
    else if (key == "lmtp") h.lmtp = flag(v);
    else if (key == "starttls_available") h.starttls_available = flag(v);
    else if (key == "require_starttls") h.require_starttls = flag(v);
    else if (key == "auth_require_tls") h.auth_require_tls = flag(v);
    else if (key == "auth_required") h.auth_required = flag(v);
    else if (key == "auth_max_failures") h.auth_max_failures = static_cast<unsigned>(std::stoul(v));
    else if (key == "call_limit_default") {
        h.call_limit_enabled = true;
        h.call_limit_default = static_cast<std::uint32_t>(std::stoul(v));
    } else if (key == "call_limit") {
        const auto colon = v.rfind(':');
        h.call_limit_enabled = true;
        h.call_limits[v.substr(0, colon)] = static_cast<std::uint32_t>(std::stoul(v.substr(colon + 1)));
    } else throw tk::error("unknown setting " + key);
}

std::string wire(const std::string& replies)
{
    if (replies.empty()) return {};
    std::string out;
    for (const char c : replies) {
        if (c == '\n') out += '\r';
        out += c;
    }
    return out + "\r\n";
}

}  // namespace

int main(int argc, char** argv)
{
    try {
        tk::host h;
        std::string plugin;
        for (int i = 1; i < argc; ++i) {
            const std::string a = argv[i];
            if (a == "--plugin" && i + 1 < argc) {
                plugin = argv[++i];
                continue;
            }
            const auto eq = a.find('=');
            if (eq == std::string::npos) throw tk::error("not key=value: " + a);
            set(h, a.substr(0, eq), a.substr(eq + 1));
        }
        if (!plugin.empty()) h.load(plugin);
        const std::string in((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
        auto s = h.open("127.0.0.1", 40000);
        std::string out = wire(s.greeting());
        if (!s.closed()) out += wire(s.send(in));
        std::fwrite(out.data(), 1, out.size(), stdout);
        std::fflush(stdout);
        std::fprintf(stderr, "closed=%d\n", s.closed() ? 1 : 0);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "kit_replay: %s\n", e.what());
        return 2;
    }
}
