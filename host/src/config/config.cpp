// SPDX-License-Identifier: Apache-2.0
// config: the YAML file (docs/configuration.md) read with yaml-cpp and checked key by key into the
// plain structs of config.hpp. Nothing else in the project sees yaml-cpp. Every problem is
// one config_error line "<file>:<line>: <dotted key>: <problem>" (style.md §3.3 item 4); the
// first problem found stops the walk. TLS files are only checked for readability here: the
// TLS module loads them.
#include "config/config.hpp"

#include "proto/network.hpp"

#include <asiosmtpd/plugin.hpp>  // sdk::closest_match
#include <fmt/format.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <span>
#include <sstream>
#include <system_error>

namespace asiosmtpd::config {

// The keys each section accepts: what the parser checks against, and what known_keys()
// lists for the documentation test (docs/configuration.md documents every one).
namespace keys {
constexpr std::string_view top[] = {"server", "tls", "plugin_path", "plugins", "metrics", "log"};
constexpr std::string_view server[] = {"hostname",
                                       "ident",
                                       "listen",
                                       "data_size_limit",
                                       "command_size_limit",
                                       "enable_smtputf8",
                                       "decode_data",
                                       "require_starttls",
                                       "auth_required",
                                       "auth_require_tls",
                                       "auth_max_failures",
                                       "auth_failure_delay",
                                       "advertise_pipelining",
                                       "enable_dsn",
                                       "enable_enhanced_status_codes",
                                       "command_call_limit",
                                       "timeout",
                                       "data_min_rate",
                                       "spool_threshold",
                                       "received_header",
                                       "enable_chunking",
                                       "spool_directory",
                                       "tls_handshake_timeout",
                                       "proxy_protocol_timeout",
                                       "max_connections",
                                       "max_tls_handshakes",
                                       "max_tls_handshakes_per_client",
                                       "workers",
                                       "shutdown_grace",
                                       "log_level",
                                       "user",
                                       "group",
                                       "allow_root",
                                       "xclient_networks"};
constexpr std::string_view listener[] = {"address",        "port",       "protocol", "tls",
                                         "proxy_protocol", "reuse_port", "path",     "mode"};
constexpr std::string_view tls[] = {"certificate",       "private_key",  "min_version",
                                    "ciphers",           "ciphersuites", "request_client_certificate",
                                    "session_resumption"};
constexpr std::string_view plugin[] = {"name",      "path",         "config",    "timeout",
                                       "isolation", "memory_limit", "cpu_limit", "user"};
constexpr std::string_view metrics[] = {"listen"};
constexpr std::string_view log[] = {"format", "timestamps"};
}  // namespace keys

std::vector<std::string> known_keys()
{
    std::vector<std::string> all;
    const auto add = [&all](std::string_view prefix, std::span<const std::string_view> names) {
        for (const std::string_view n : names) all.push_back(std::string(prefix) + std::string(n));
    };
    add("", keys::top);
    add("server.", keys::server);
    add("server.listen[].", keys::listener);
    add("tls.", keys::tls);
    add("plugins[].", keys::plugin);
    add("metrics.", keys::metrics);
    add("log.", keys::log);
    return all;
}

namespace {

namespace fs = std::filesystem;

// Durations are capped so that converting them to std::chrono never overflows.
constexpr double max_seconds = 31536000;          // one year
constexpr std::size_t max_tree_depth = 64;        // plugin `config:` nesting
constexpr std::size_t max_tree_nodes = 100000;    // plugin `config:` size after alias expansion
constexpr std::size_t max_file_size = 16u << 20;  // a config file is small; refuse /dev/zero
constexpr std::size_t max_shown_value = 60;       // characters of an offending value in a message

constexpr std::string_view tag_int = "tag:yaml.org,2002:int";
constexpr std::string_view tag_float = "tag:yaml.org,2002:float";
constexpr std::string_view tag_bool = "tag:yaml.org,2002:bool";

// A value being read: the node, where to point at in messages, and its dotted key.
struct item {
    YAML::Node value;
    YAML::Mark mark;
    std::string key;
    std::uint32_t key_line = 0;  // the line of its key in a mapping (0: not a mapping's value)
};

// The fields of one YAML mapping, keys checked against the known set, in file order.
class mapping {
public:
    void add(std::string name, item it) { fields_.emplace_back(std::move(name), std::move(it)); }

    const item* find(std::string_view name) const noexcept
    {
        for (const auto& [n, it] : fields_)
            if (n == name) return &it;
        return nullptr;
    }

private:
    std::vector<std::pair<std::string, item>> fields_;
};

std::string join_key(std::string_view prefix, std::string_view name)
{
    if (prefix.empty()) return std::string(name);
    return fmt::format("{}.{}", prefix, name);
}

std::string index_key(std::string_view prefix, std::size_t i) { return fmt::format("{}[{}]", prefix, i); }

// A node's own mark, except for an empty (null) value, whose mark yaml-cpp puts at the start
// of the next token (often the next line): the key's line is what the user wants to see.
YAML::Mark value_mark(const YAML::Node& key, const YAML::Node& value)
{
    if (value.IsNull()) return key.Mark();
    return value.Mark();
}

bool plain(const YAML::Node& n) { return n.Tag() == "?"; }

// 1-based, 0 when unknown.
std::uint32_t line_of(const YAML::Mark& m)
{
    return m.is_null() || m.line < 0 ? 0 : static_cast<std::uint32_t>(m.line) + 1;
}

// How an offending value is shown: its text quoted and escaped, or its kind.
std::string describe(const YAML::Node& n)
{
    switch (n.Type()) {
    case YAML::NodeType::Null: return "null";
    case YAML::NodeType::Sequence: return "a sequence";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar: break;
    case YAML::NodeType::Undefined: return "nothing";
    }
    std::string text = n.Scalar();
    const bool cut = text.size() > max_shown_value;
    if (cut) text.resize(max_shown_value);
    // A quoted "25" is a string in YAML; say so, or "got "25"" would puzzle the reader.
    const std::string_view what = n.Tag() == "!" ? "the string " : "";
    return fmt::format("{}{:?}{}", what, text, cut ? "..." : "");
}

bool has_control(std::string_view s, bool allow_space)
{
    return std::any_of(s.begin(), s.end(), [allow_space](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u < 0x20 || u == 0x7f || (!allow_space && u == ' ');
    });
}

// The machine's FQDN as aiosmtpd's socket.getfqdn() default: the canonical name of
// gethostname(), or gethostname() itself when it does not resolve.
std::string machine_fqdn()
{
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
    std::string name = buf;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_CANONNAME;
    addrinfo* res = nullptr;
    if (::getaddrinfo(name.c_str(), nullptr, &hints, &res) == 0 && res != nullptr) {
        if (res->ai_canonname != nullptr && res->ai_canonname[0] != '\0') name = res->ai_canonname;
        ::freeaddrinfo(res);
    }
    return name;
}

// Control bytes in an error message escaped as \xNN, so that the error stays the one line
// the README promises: yaml-cpp quotes the offending character in some messages ("unknown escape
// character: X"), and a key may contain anything (found by tests/fuzz/config_fuzz).
std::string one_line(std::string_view text)
{
    std::string out;
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) out += fmt::format("\\x{:02x}", u);
        else out += c;
    }
    return out;
}

// One getpwnam_r-style lookup, growing the buffer on ERANGE: true when an entry was found.
template <class Entry, class Lookup>
bool lookup_entry(Entry& entry, std::vector<char>& buf, Lookup lookup)
{
    buf.resize(1024);
    for (;;) {
        Entry* found = nullptr;
        const int rc = lookup(&entry, buf.data(), buf.size(), &found);
        if (rc == ERANGE && buf.size() < (1u << 20)) {
            buf.resize(buf.size() * 2);
            continue;
        }
        return rc == 0 && found != nullptr;
    }
}

// "65534" -> 65534; anything else (names, signs, too large) -> nullopt.
std::optional<std::uint32_t> numeric_id(std::string_view s)
{
    if (s.empty() || s.size() > 10 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return std::nullopt;
    std::uint64_t v = 0;
    std::from_chars(s.data(), s.data() + s.size(), v);
    if (v > std::numeric_limits<std::uint32_t>::max() - 1)  // (uid_t)-1 means "unchanged" to setresuid
        return std::nullopt;
    return static_cast<std::uint32_t>(v);
}

struct db_entry {
    std::string name;
    std::uint32_t id = 0;
    std::uint32_t primary_gid = 0;  // users only
};

// A user by name, else by numeric id, in the user database (NSS: files, LDAP, ...).
std::optional<db_entry> find_user(const std::string& text)
{
    passwd pw{};
    std::vector<char> buf;
    bool ok = lookup_entry(
        pw, buf, [&](passwd* e, char* b, std::size_t n, passwd** r) { return ::getpwnam_r(text.c_str(), e, b, n, r); });
    const auto id = numeric_id(text);
    if (!ok && id)
        ok = lookup_entry(pw, buf,
                          [&](passwd* e, char* b, std::size_t n, passwd** r) { return ::getpwuid_r(*id, e, b, n, r); });
    if (!ok) return std::nullopt;
    return db_entry{pw.pw_name, pw.pw_uid, pw.pw_gid};
}

// A group by name, else by numeric id, in the group database.
std::optional<db_entry> find_group(const std::string& text)
{
    group gr{};
    std::vector<char> buf;
    bool ok = lookup_entry(
        gr, buf, [&](group* e, char* b, std::size_t n, group** r) { return ::getgrnam_r(text.c_str(), e, b, n, r); });
    const auto id = numeric_id(text);
    if (!ok && id)
        ok = lookup_entry(gr, buf,
                          [&](group* e, char* b, std::size_t n, group** r) { return ::getgrgid_r(*id, e, b, n, r); });
    if (!ok) return std::nullopt;
    return db_entry{gr.gr_name, gr.gr_gid, 0};
}

// When this process is not root: " (asiosmtpd runs as user nobody, uid 65534)", so that a
// "Permission denied" after the privilege drop (a SIGHUP reload) says whose permission.
std::string not_root_note()
{
    const uid_t uid = ::geteuid();
    if (uid == 0) return {};
    const auto user = find_user(std::to_string(uid));
    return fmt::format(" (asiosmtpd runs as user {}, uid {})", user ? user->name : std::to_string(uid), uid);
}

class reader {
public:
    reader(std::string file, fs::path base_dir) : file_(std::move(file)), base_dir_(std::move(base_dir)) {}

    settings read(const YAML::Node& root);

private:
    [[noreturn]] void fail(const YAML::Mark& at, std::string_view key, std::string_view problem) const
    {
        if (key.empty()) key = "(document)";
        if (at.is_null() || at.line < 0)
            throw config_error(fmt::format("{}: {}: {}", file_, one_line(key), one_line(problem)));
        throw config_error(fmt::format("{}:{}: {}: {}", file_, at.line + 1, one_line(key), one_line(problem)));
    }

    mapping open_map(const item& it, std::span<const std::string_view> known) const;
    std::vector<item> open_sequence(const item& it, bool non_empty) const;

    bool read_bool(const item& it) const;
    std::uint64_t read_uint(const item& it, std::uint64_t min, std::uint64_t max) const;
    std::uint64_t read_byte_size(const item& it, std::uint64_t min, std::uint64_t max) const;
    double read_seconds(const item& it, bool zero_allowed) const;
    std::string read_string(const item& it) const;
    fs::path read_path(const item& it, bool folder) const;
    template <class E>
    E read_enum(const item& it, std::initializer_list<std::pair<std::string_view, E>> choices) const;

    // The tls section with where its two values are, for the readability check.
    struct tls_section {
        tls_settings value;
        item certificate;
        item private_key;
    };

    void read_document(const YAML::Node& root, settings& out);
    void read_server(const item& it, server_settings& s);
    listener read_listener(const item& it);
    void read_run_as(const item* user, const item* group, server_settings& s) const;
    void read_plugin_user(const item& it, plugin_entry& p, const server_settings& server) const;
    void read_unix_listener(const mapping& m, listener& l) const;
    std::string where(const YAML::Mark& at) const
    {
        return at.is_null() || at.line < 0 ? file_ : fmt::format("{}:{}", file_, at.line + 1);
    }
    call_limits read_call_limits(const item& it) const;
    tls_section read_tls(const item& it) const;
    plugin_entry read_plugin(const item& it, const server_settings& server) const;
    node read_tree(const YAML::Node& n, const YAML::Mark& at, const std::string& key, std::size_t depth,
                   std::size_t& budget) const;
    void check_readable(const item& it, const fs::path& p) const;

    std::string file_;
    fs::path base_dir_;
    std::vector<YAML::Mark> listen_tls_marks_;  // per listed listener: its `tls:` (or the item)
};

mapping reader::open_map(const item& it, std::span<const std::string_view> known) const
{
    if (!it.value.IsMap()) fail(it.mark, it.key, fmt::format("expected a mapping, got {}", describe(it.value)));
    mapping m;
    for (const auto& kv : it.value) {
        const YAML::Node& k = kv.first;
        if (!k.IsScalar()) fail(k.Mark(), it.key, fmt::format("expected a plain key, got {}", describe(k)));
        std::string name = k.Scalar();
        std::string key = join_key(it.key, name);
        if (std::find(known.begin(), known.end(), name) == known.end()) {
            const std::string_view near = sdk::closest_match(name, known);
            fail(k.Mark(), key,
                 near.empty() ? std::string("unknown key") : fmt::format("unknown key (did you mean '{}'?)", near));
        }
        if (m.find(name) != nullptr) fail(k.Mark(), key, "duplicate key");
        m.add(std::move(name), item{kv.second, value_mark(k, kv.second), std::move(key), line_of(k.Mark())});
    }
    return m;
}

std::vector<item> reader::open_sequence(const item& it, bool non_empty) const
{
    if (!it.value.IsSequence() || (non_empty && it.value.size() == 0))
        fail(it.mark, it.key,
             fmt::format("expected a {}sequence, got {}", non_empty ? "non-empty " : "",
                         it.value.IsSequence() ? "an empty sequence" : describe(it.value)));
    std::vector<item> out;
    std::size_t i = 0;
    for (const auto& v : it.value) {
        const YAML::Mark m = v.IsNull() ? it.mark : v.Mark();
        out.push_back(item{v, m, index_key(it.key, i)});
        ++i;
    }
    return out;
}

bool reader::read_bool(const item& it) const
{
    const YAML::Node& n = it.value;
    if (n.IsScalar() && (plain(n) || n.Tag() == tag_bool)) {
        // yaml-cpp's YAML 1.1 spellings: true/false, yes/no, on/off, y/n in three casings.
        bool b = false;
        if (YAML::convert<bool>::decode(n, b)) return b;
    }
    fail(it.mark, it.key, fmt::format("expected true or false, got {}", describe(n)));
}

std::uint64_t reader::read_uint(const item& it, std::uint64_t min, std::uint64_t max) const
{
    const YAML::Node& n = it.value;
    auto bad = [&](std::string_view why) {
        const std::string range =
            max == std::numeric_limits<std::uint64_t>::max() || max == std::numeric_limits<std::uint32_t>::max()
                ? fmt::format(">= {}", min)
                : fmt::format("{}..{}", min, max);
        fail(it.mark, it.key, fmt::format("expected an integer {}, got {}{}", range, describe(n), why));
    };
    if (!n.IsScalar() || !(plain(n) || n.Tag() == tag_int)) bad("");
    // Decimal only, as YAML 1.2's core schema; no 0x/0o, no "1_000", no "12abc".
    std::string_view s = n.Scalar();
    bool negative = false;
    if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
        negative = s.front() == '-';
        s.remove_prefix(1);
    }
    if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) bad("");
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (negative && !(ec == std::errc{} && v == 0)) bad("");
    if (ec == std::errc::result_out_of_range || (ec == std::errc{} && v > max)) bad(" (too large)");
    if (ec != std::errc{} || end != s.data() + s.size() || v < min) bad("");
    return v;
}

// Bytes: an integer, or one with a binary suffix K, M, G or T ("256M" = 256 MiB).
std::uint64_t reader::read_byte_size(const item& it, std::uint64_t min, std::uint64_t max) const
{
    const YAML::Node& n = it.value;
    auto bad = [&](std::string_view why) {
        fail(it.mark, it.key,
             fmt::format("expected a size in bytes >= {} (an integer, or with K, M, G or T: 256M), got {}{}", min,
                         describe(n), why));
    };
    if (!n.IsScalar()) bad("");
    std::string_view s = n.Scalar();
    unsigned shift = 0;
    if (!s.empty()) {
        switch (s.back()) {
        case 'K':
        case 'k': shift = 10; break;
        case 'M':
        case 'm': shift = 20; break;
        case 'G':
        case 'g': shift = 30; break;
        case 'T':
        case 't': shift = 40; break;
        default: break;
        }
        if (shift != 0) s.remove_suffix(1);
    }
    if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) bad("");
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size() || v > (max >> shift)) bad(" (too large)");
    v <<= shift;
    if (v < min) bad(" (too small)");
    return v;
}

double reader::read_seconds(const item& it, bool zero_allowed) const
{
    const YAML::Node& n = it.value;
    auto bad = [&] {
        fail(it.mark, it.key,
             fmt::format("expected seconds {} 0 and <= {}, got {}", zero_allowed ? ">=" : ">", max_seconds,
                         describe(n)));
    };
    if (!n.IsScalar() || !(plain(n) || n.Tag() == tag_float || n.Tag() == tag_int)) bad();
    std::string_view s = n.Scalar();
    if (!s.empty() && s.front() == '+') s.remove_prefix(1);
    double v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc{} || end != s.data() + s.size() || !std::isfinite(v) || v < 0 ||
        (v == 0 && !zero_allowed) || v > max_seconds)
        bad();
    return v;
}

std::string reader::read_string(const item& it) const
{
    if (!it.value.IsScalar()) fail(it.mark, it.key, fmt::format("expected a string, got {}", describe(it.value)));
    return it.value.Scalar();
}

fs::path reader::read_path(const item& it, bool folder) const
{
    const std::string s = read_string(it);
    if (s.empty()) fail(it.mark, it.key, "expected a path, got an empty string");
    if (s.find('\0') != std::string::npos) fail(it.mark, it.key, "a path cannot contain a NUL byte");
    // relative paths are relative to the config file's folder.
    fs::path p = fs::path(s);
    if (p.is_relative()) p = base_dir_ / p;
    p = p.lexically_normal();
    if (folder && !p.has_filename() && p != p.root_path()) p = p.parent_path();  // "plugins/" -> ".../plugins"
    return p;
}

template <class E>
E reader::read_enum(const item& it, std::initializer_list<std::pair<std::string_view, E>> choices) const
{
    if (it.value.IsScalar()) {
        const std::string& s = it.value.Scalar();
        for (const auto& [name, e] : choices)
            if (s == name) return e;
    }
    std::string names;
    for (const auto& c : choices) names += names.empty() ? std::string(c.first) : fmt::format(", {}", c.first);
    fail(it.mark, it.key, fmt::format("expected one of {}, got {}", names, describe(it.value)));
}

listener reader::read_listener(const item& it)
{
    const mapping m = open_map(it, keys::listener);
    listener l;
    l.key = it.key;
    l.line = line_of(it.mark);
    if (const item* f = m.find("address")) {
        l.address = read_string(*f);
        if (l.address.empty() || has_control(l.address, false))
            fail(f->mark, f->key, fmt::format("expected an address or host name, got {}", describe(f->value)));
    }
    if (const item* f = m.find("port"))
        l.port = static_cast<std::uint16_t>(read_uint(*f, 0, 65535));  // 0: an ephemeral port (tests)
    if (const item* f = m.find("protocol"))
        l.protocol = read_enum<protocol>(*f, {{"smtp", protocol::smtp}, {"lmtp", protocol::lmtp}});
    const item* tls = m.find("tls");
    listen_tls_marks_.push_back(tls != nullptr ? tls->mark : it.mark);
    if (const item* f = tls)
        l.tls = read_enum<tls_mode>(
            *f, {{"none", tls_mode::none}, {"starttls", tls_mode::starttls}, {"implicit", tls_mode::implicit}});
    if (const item* f = m.find("proxy_protocol")) l.proxy_protocol = read_bool(*f);
    if (const item* f = m.find("reuse_port")) l.reuse_port = read_bool(*f);
    read_unix_listener(m, l);
    return l;
}

// A UNIX socket listener: `path` instead of address/port, and the socket file's `mode`.
void reader::read_unix_listener(const mapping& m, listener& l) const
{
    const item* path = m.find("path");
    const item* mode = m.find("mode");
    if (path == nullptr) {
        if (mode != nullptr) fail(mode->mark, mode->key, "applies to a UNIX socket listener (with path:) only");
        return;
    }
    for (const char* tcp_only : {"address", "port", "reuse_port"})
        if (const item* f = m.find(tcp_only))
            fail(f->mark, f->key,
                 fmt::format("a listener has either path: (a UNIX socket) or address:/port: (TCP), not both"));
    l.path = read_path(*path, false);
    // sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
    constexpr std::size_t max_path = sizeof(sockaddr_un::sun_path) - 1;
    if (l.path.native().size() > max_path)
        fail(path->mark, path->key,
             fmt::format("{:?} is too long for a UNIX socket ({} bytes, at most {})", l.path.string(),
                         l.path.native().size(), max_path));
    const fs::path dir = l.path.parent_path();
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        fail(path->mark, path->key, fmt::format("the folder {:?} does not exist (create it first)", dir.string()));
    if (fs::is_directory(l.path, ec))
        fail(path->mark, path->key, fmt::format("{:?} is a folder; name the socket file", l.path.string()));
    if (mode != nullptr) {
        const std::string text = mode->value.IsScalar() ? mode->value.Scalar() : std::string();
        const bool octal = !text.empty() && text.size() <= 4 &&
                           std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '7'; });
        if (!octal)
            fail(mode->mark, mode->key,
                 fmt::format("expected an octal file mode such as \"0660\", got {}", describe(mode->value)));
        l.mode = static_cast<std::uint32_t>(std::stoul(text, nullptr, 8));
    }
    l.address.clear();
    l.port = 0;
}

call_limits reader::read_call_limits(const item& it) const
{
    constexpr std::uint64_t u32_max = std::numeric_limits<std::uint32_t>::max();
    call_limits c;
    const YAML::Node& n = it.value;
    if (n.IsNull()) return c;
    if (n.IsScalar()) {
        // aiosmtpd: an int is the budget of every verb.
        c.enabled = true;
        c.default_limit = static_cast<std::uint32_t>(read_uint(it, 1, u32_max));
        return c;
    }
    if (!n.IsMap())
        fail(it.mark, it.key,
             fmt::format("expected null, an integer or a mapping of verbs to integers, got {}", describe(n)));
    // aiosmtpd: a dict gives per-verb budgets, "*" the others' (CALL_LIMIT_DEFAULT 20 if absent).
    c.enabled = true;
    bool star_seen = false;
    for (const auto& kv : n) {
        const YAML::Node& k = kv.first;
        if (!k.IsScalar()) fail(k.Mark(), it.key, fmt::format("expected a plain key, got {}", describe(k)));
        const std::string& verb = k.Scalar();
        const item value{kv.second, value_mark(k, kv.second), join_key(it.key, verb)};
        if (verb == "*") {
            if (star_seen) fail(k.Mark(), value.key, "duplicate key");
            star_seen = true;
            c.default_limit = static_cast<std::uint32_t>(read_uint(value, 1, u32_max));
            continue;
        }
        const bool is_verb = !verb.empty() && std::all_of(verb.begin(), verb.end(), [](char ch) {
            const auto u = static_cast<unsigned char>(ch);
            return std::isalnum(u) != 0 || ch == '_' || ch == '-';
        });
        if (!is_verb) fail(k.Mark(), value.key, "expected a command verb or \"*\" as key");
        std::string upper = verb;
        std::transform(upper.begin(), upper.end(), upper.begin(),
                       [](char ch) { return static_cast<char>(std::toupper(static_cast<unsigned char>(ch))); });
        if (c.per_verb.count(upper) != 0) fail(k.Mark(), value.key, "duplicate key (verbs are case-insensitive)");
        c.per_verb.emplace(std::move(upper), static_cast<std::uint32_t>(read_uint(value, 1, u32_max)));
    }
    return c;
}

void reader::read_server(const item& it, server_settings& s)
{
    constexpr std::uint64_t u32_max = std::numeric_limits<std::uint32_t>::max();
    const mapping m = open_map(it, keys::server);

    if (const item* f = m.find("hostname"); f != nullptr && !f->value.IsNull()) {
        s.hostname = read_string(*f);
        // It goes into the 220 greeting and EHLO reply: one token, no CR/LF smuggled in.
        if (has_control(s.hostname, false))
            fail(f->mark, f->key,
                 fmt::format("expected a host name without spaces or control characters, got {}", describe(f->value)));
    }

    if (const item* f = m.find("ident"); f != nullptr && !f->value.IsNull()) {
        if (!f->value.IsScalar())
            fail(f->mark, f->key, fmt::format("expected a string or null, got {}", describe(f->value)));
        s.ident = f->value.Scalar();
        if (has_control(*s.ident, true))
            fail(f->mark, f->key, fmt::format("expected text without control characters, got {}", describe(f->value)));
    }

    // A null `listen:` is as if absent (the default listener).
    if (const item* f = m.find("listen"); f != nullptr && !f->value.IsNull()) {
        s.listen.clear();
        const std::vector<item> items = open_sequence(*f, true);
        for (std::size_t i = 0; i < items.size(); ++i) {
            listener l = read_listener(items[i]);
            for (std::size_t j = 0; j < s.listen.size(); ++j) {
                if (l.port != 0 && s.listen[j].port == l.port && s.listen[j].address == l.address)
                    fail(items[i].mark, items[i].key, fmt::format("same address and port as {}", items[j].key));
                if (!l.path.empty() && s.listen[j].path == l.path)
                    fail(items[i].mark, items[i].key, fmt::format("same path as {}", items[j].key));
            }
            s.listen.push_back(std::move(l));
        }
    }

    if (const item* f = m.find("data_size_limit"))
        s.data_size_limit = read_uint(*f, 0, std::numeric_limits<std::uint64_t>::max());
    if (const item* f = m.find("command_size_limit"))
        s.command_size_limit = static_cast<std::uint32_t>(read_uint(*f, 64, 65536));

    const std::pair<std::string_view, bool server_settings::*> flags[] = {
        {"enable_smtputf8", &server_settings::enable_smtputf8},
        {"decode_data", &server_settings::decode_data},
        {"require_starttls", &server_settings::require_starttls},
        {"auth_required", &server_settings::auth_required},
        {"auth_require_tls", &server_settings::auth_require_tls},
        {"advertise_pipelining", &server_settings::advertise_pipelining},
        {"enable_dsn", &server_settings::enable_dsn},
        {"enable_enhanced_status_codes", &server_settings::enable_enhanced_status_codes},
        {"received_header", &server_settings::received_header},
        {"enable_chunking", &server_settings::enable_chunking},
    };
    for (const auto& [name, member] : flags)
        if (const item* f = m.find(name)) s.*member = read_bool(*f);

    if (const item* f = m.find("command_call_limit")) s.command_call_limit = read_call_limits(*f);
    if (const item* f = m.find("timeout")) s.timeout = read_seconds(*f, false);
    if (const item* f = m.find("data_min_rate")) s.data_min_rate = read_uint(*f, 0, 1ull << 40);
    if (const item* f = m.find("spool_threshold")) s.spool_threshold = read_uint(*f, 0, 1ull << 40);
    if (const item* f = m.find("spool_directory")) s.spool_directory = read_path(*f, true);
    if (const item* f = m.find("auth_max_failures"))
        s.auth_max_failures = static_cast<std::uint32_t>(read_uint(*f, 0, 1000000));
    if (const item* f = m.find("auth_failure_delay")) s.auth_failure_delay = read_seconds(*f, true);
    if (const item* f = m.find("log_level"))
        s.log_level =
            read_enum<std::string>(*f, {{"debug", "debug"}, {"info", "info"}, {"warn", "warn"}, {"error", "error"}});
    if (const item* f = m.find("proxy_protocol_timeout")) s.proxy_protocol_timeout = read_seconds(*f, false);
    if (const item* f = m.find("tls_handshake_timeout")) s.tls_handshake_timeout = read_seconds(*f, false);
    if (const item* f = m.find("max_connections"))
        s.max_connections = static_cast<std::uint32_t>(read_uint(*f, 1, u32_max));
    if (const item* f = m.find("max_tls_handshakes"))
        s.max_tls_handshakes = static_cast<std::uint32_t>(read_uint(*f, 0, u32_max));
    if (const item* f = m.find("max_tls_handshakes_per_client"))
        s.max_tls_handshakes_per_client = static_cast<std::uint32_t>(read_uint(*f, 0, u32_max));
    if (const item* f = m.find("workers")) s.workers = static_cast<std::uint32_t>(read_uint(*f, 0, 1024));
    if (const item* f = m.find("shutdown_grace")) s.shutdown_grace = read_seconds(*f, true);
    if (const item* f = m.find("xclient_networks"); f != nullptr && !f->value.IsNull()) {
        for (const item& e : open_sequence(*f, false)) {
            const std::string text = read_string(e);
            std::string why;
            if (!proto::parse_network(text, why))
                fail(e.mark, e.key, fmt::format("{}, got {}", why, describe(e.value)));
            s.xclient_networks.push_back(text);
        }
    }

    // null is as if absent: no switch.
    auto given = [&m](std::string_view name) -> const item* {
        const item* f = m.find(name);
        return f != nullptr && !f->value.IsNull() ? f : nullptr;
    };
    read_run_as(given("user"), given("group"), s);
    if (const item* f = m.find("allow_root")) {
        s.allow_root = read_bool(*f);
        s.allow_root_at = where(f->mark);
    }
}

void reader::read_run_as(const item* user, const item* group, server_settings& s) const
{
    if (user == nullptr) {
        if (group != nullptr)
            fail(group->mark, group->key, "set without server.user (the group is used when switching to that user)");
        return;
    }
    const std::string name = read_string(*user);
    if (name.empty() || has_control(name, false))
        fail(user->mark, user->key, fmt::format("expected a user name or id, got {}", describe(user->value)));
    const auto u = find_user(name);
    if (!u) fail(user->mark, user->key, fmt::format("unknown user {:?} (not in the user database)", name));
    if (u->id == 0)
        fail(user->mark, user->key,
             fmt::format("{:?} is root (uid 0): name an unprivileged user, or leave server.user unset", name));
    run_as r;
    r.user = u->name;
    r.uid = u->id;
    r.gid = u->primary_gid;
    r.user_at = where(user->mark);
    if (group != nullptr) {
        const std::string gname = read_string(*group);
        if (gname.empty() || has_control(gname, false))
            fail(group->mark, group->key, fmt::format("expected a group name or id, got {}", describe(group->value)));
        const auto g = find_group(gname);
        if (!g) fail(group->mark, group->key, fmt::format("unknown group {:?} (not in the group database)", gname));
        r.group = g->name;
        r.gid = g->id;
        r.group_given = true;
        r.group_at = where(group->mark);
    } else {
        // The user's primary group, named if the group database knows it.
        const auto g = find_group(std::to_string(r.gid));
        r.group = g && g->id == r.gid ? g->name : std::to_string(r.gid);
    }
    s.user = std::move(r);
}

reader::tls_section reader::read_tls(const item& it) const
{
    const mapping m = open_map(it, keys::tls);
    const item* cert = m.find("certificate");
    const item* key = m.find("private_key");
    if (cert == nullptr) fail(it.mark, join_key(it.key, "certificate"), "missing (the tls section needs it)");
    if (key == nullptr) fail(it.mark, join_key(it.key, "private_key"), "missing (the tls section needs it)");
    tls_section t{{}, *cert, *key};
    t.value.certificate = read_path(*cert, false);
    t.value.private_key = read_path(*key, false);
    if (const item* f = m.find("min_version"))
        t.value.min_version = read_enum<tls_version>(*f, {{"1.2", tls_version::v1_2}, {"1.3", tls_version::v1_3}});
    // Checked against OpenSSL when the TLS context is made (the tls module names the key).
    if (const item* f = m.find("ciphers")) t.value.ciphers = read_string(*f);
    if (const item* f = m.find("ciphersuites")) t.value.ciphersuites = read_string(*f);
    if (const item* f = m.find("request_client_certificate")) t.value.request_client_certificate = read_bool(*f);
    if (const item* f = m.find("session_resumption")) t.value.session_resumption = read_bool(*f);
    return t;
}

void reader::check_readable(const item& it, const fs::path& p) const
{
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        fail(it.mark, it.key,
             fmt::format("cannot read {:?}: {}{}", p.string(), std::strerror(err),
                         err == EACCES ? not_root_note() : std::string()));
    }
    struct stat st {};
    const int rc = ::fstat(fd, &st);
    ::close(fd);
    if (rc != 0 || !S_ISREG(st.st_mode))
        fail(it.mark, it.key, fmt::format("cannot read {:?}: not a regular file", p.string()));
}

node reader::read_tree(const YAML::Node& n, const YAML::Mark& at, const std::string& key, std::size_t depth,
                       std::size_t& budget) const
{
    // Aliases are shared and may even refer to themselves (`&a [*a]`): bound the walk.
    if (depth > max_tree_depth) fail(at, key, fmt::format("nested deeper than {} levels", max_tree_depth));
    if (budget == 0) fail(at, key, fmt::format("more than {} values (alias expansion?)", max_tree_nodes));
    --budget;
    node out;
    out.line = line_of(at);
    switch (n.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null: return out;
    case YAML::NodeType::Scalar:
        out.type = node::kind::scalar;
        out.scalar = n.Scalar();
        return out;
    case YAML::NodeType::Sequence: {
        out.type = node::kind::sequence;
        std::size_t i = 0;
        for (const auto& v : n) {
            out.items.push_back(read_tree(v, v.IsNull() ? at : v.Mark(), index_key(key, i), depth + 1, budget));
            ++i;
        }
        return out;
    }
    case YAML::NodeType::Map:
        out.type = node::kind::map;
        for (const auto& kv : n) {
            const YAML::Node& k = kv.first;
            if (!k.IsScalar()) fail(k.Mark(), key, fmt::format("expected a plain key, got {}", describe(k)));
            std::string sub = join_key(key, k.Scalar());
            if (std::find(out.keys.begin(), out.keys.end(), k.Scalar()) != out.keys.end())
                fail(k.Mark(), sub, "duplicate key");
            out.items.push_back(read_tree(kv.second, value_mark(k, kv.second), sub, depth + 1, budget));
            out.keys.push_back(k.Scalar());
            out.key_lines.push_back(line_of(k.Mark()));
        }
        return out;
    }
    return out;
}

// plugins[].user: the account the plugin's child process runs as (isolation: process only). The
// child becomes that user when it starts, which needs root: so only when the server keeps root
// (no server.user), or when it names server.user's own account (nothing to switch then).
void reader::read_plugin_user(const item& it, plugin_entry& p, const server_settings& server) const
{
    if (p.isolation != plugin_entry::isolation_mode::process)
        fail(it.mark, it.key, "needs isolation: process (a plugin in the server's own process runs as the server)");
    const std::string name = read_string(it);
    if (name.empty() || has_control(name, false))
        fail(it.mark, it.key, fmt::format("expected a user name or id, got {}", describe(it.value)));
    const auto u = find_user(name);
    if (!u) fail(it.mark, it.key, fmt::format("unknown user {:?} (not in the user database)", name));
    if (u->id == 0)
        fail(it.mark, it.key,
             fmt::format("{:?} is root (uid 0): name an unprivileged user, or leave plugins[].user unset", name));
    if (server.user && server.user->uid != u->id)
        fail(it.mark, it.key,
             fmt::format("cannot be used with server.user ({}): the server gives up root before it starts plugins, "
                         "so it cannot start a plugin process as another user; leave server.user unset (the "
                         "server then runs as root and each plugin with isolation: process as its own user) or "
                         "name the same user",
                         server.user->user_at));
    run_as r;
    r.user = u->name;
    r.uid = u->id;
    r.gid = u->primary_gid;
    const auto g = find_group(std::to_string(r.gid));
    r.group = g && g->id == r.gid ? g->name : std::to_string(r.gid);
    r.user_at = where(it.mark);
    p.user = std::move(r);
}

plugin_entry reader::read_plugin(const item& it, const server_settings& server) const
{
    const mapping m = open_map(it, keys::plugin);
    plugin_entry p;
    p.key = it.key;
    p.line = line_of(it.mark);
    const item* name = m.find("name");
    const item* path = m.find("path");
    if (name != nullptr && path != nullptr) fail(path->mark, it.key, "give either name or path, not both");
    if (name == nullptr && path == nullptr) fail(it.mark, it.key, "needs a name or a path");
    if (name != nullptr) {
        // Looked up as <name>.so in the plugin folders: no '/' and no upper case.
        const bool ok = name->value.IsScalar() && !name->value.Scalar().empty() &&
                        std::all_of(name->value.Scalar().begin(), name->value.Scalar().end(), [](char c) {
                            return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
                        });
        if (!ok)
            fail(name->mark, name->key,
                 fmt::format("expected a plugin name of [a-z0-9_.-], got {}", describe(name->value)));
        p.name = name->value.Scalar();
        p.name_line = line_of(name->mark);
    }
    if (path != nullptr) p.path = read_path(*path, false);
    if (const item* f = m.find("config")) {
        std::size_t budget = max_tree_nodes;
        p.config = read_tree(f->value, f->mark, f->key, 0, budget);
        p.config_line = f->key_line;
    }
    if (const item* f = m.find("timeout")) p.timeout = read_seconds(*f, false);
    if (const item* f = m.find("isolation"))
        p.isolation = read_enum<plugin_entry::isolation_mode>(
            *f, {{"none", plugin_entry::isolation_mode::none}, {"process", plugin_entry::isolation_mode::process}});
    if (const item* f = m.find("memory_limit")) {
        if (p.isolation != plugin_entry::isolation_mode::process)
            fail(f->mark, f->key,
                 "needs isolation: process (a plugin in the server's own process has no limit of its own)");
        p.memory_limit = read_byte_size(*f, 16ull << 20, 1ull << 44);
    }
    if (const item* f = m.find("cpu_limit")) {
        if (p.isolation != plugin_entry::isolation_mode::process)
            fail(f->mark, f->key,
                 "needs isolation: process (a plugin in the server's own process has no limit of its own)");
        p.cpu_limit = read_seconds(*f, false);
        if (p.cpu_limit < 0.001)
            fail(f->mark, f->key, fmt::format("expected at least 0.001 seconds, got {}", describe(f->value)));
    }
    if (const item* f = m.find("user")) read_plugin_user(*f, p, server);
    return p;
}

settings reader::read(const YAML::Node& root)
{
    settings out;
    out.file = file_;
    out.base_dir = base_dir_;
    if (!root.IsNull()) read_document(root, out);
    // no hostname (absent, null or empty) means the machine's FQDN.
    if (out.server.hostname.empty()) out.server.hostname = machine_fqdn();
    return out;
}

void reader::read_document(const YAML::Node& root, settings& out)
{
    if (!root.IsMap()) fail(root.Mark(), "", fmt::format("expected a mapping, got {}", describe(root)));
    const mapping m = open_map(item{root, root.Mark(), ""}, keys::top);

    // A null section (`server:` with everything below commented out) is as if absent.
    auto present = [&m](std::string_view name) -> const item* {
        const item* f = m.find(name);
        return f != nullptr && !f->value.IsNull() ? f : nullptr;
    };

    if (const item* f = present("server")) read_server(*f, out.server);

    // The tls section is always type-checked, but used (and its files checked) only when a
    // listener needs it.
    std::optional<tls_section> tls;
    if (const item* f = present("tls")) tls = read_tls(*f);
    for (std::size_t i = 0; i < out.server.listen.size(); ++i) {
        const tls_mode mode = out.server.listen[i].tls;
        if (mode == tls_mode::none) continue;
        if (!tls) {
            // The default listener has no line of its own; a listed one points at its `tls:`.
            const YAML::Mark at = i < listen_tls_marks_.size() ? listen_tls_marks_[i] : YAML::Mark::null_mark();
            fail(at, "tls",
                 fmt::format("required (certificate and private_key) because server.listen[{}] uses tls: {}", i,
                             mode == tls_mode::starttls ? "starttls" : "implicit"));
        }
        check_readable(tls->certificate, tls->value.certificate);
        check_readable(tls->private_key, tls->value.private_key);
        out.tls = std::move(tls->value);
        break;
    }

    if (const item* f = present("plugin_path"))
        for (const item& e : open_sequence(*f, false)) out.plugin_path.push_back(read_path(e, true));

    if (const item* f = present("plugins"))
        for (const item& e : open_sequence(*f, false)) out.plugins.push_back(read_plugin(e, out.server));

    if (const item* f = present("metrics")) {
        const mapping mm = open_map(*f, keys::metrics);
        metrics_settings ms;
        if (const item* l = mm.find("listen")) {
            // "address:port", split at the last colon ("[::1]:9125" or "::1:9125" for IPv6).
            const std::string text = read_string(*l);
            const auto colon = text.rfind(':');
            std::string host = colon == std::string::npos ? std::string() : text.substr(0, colon);
            if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
            const std::string port = colon == std::string::npos ? std::string() : text.substr(colon + 1);
            const bool digits = !port.empty() && port.size() <= 5 &&
                                std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
            if (host.empty() || !digits || std::stoul(port) > 65535)
                fail(l->mark, l->key, fmt::format("expected address:port, got {:?}", text));
            ms.address = host;
            ms.port = static_cast<std::uint16_t>(std::stoul(port));
            ms.line = line_of(l->mark);
        }
        out.metrics = ms;
    }

    if (const item* f = present("log")) {
        const mapping lm = open_map(*f, keys::log);
        if (const item* v = lm.find("format"))
            out.log.format = read_enum<std::string>(*v, {{"text", "text"}, {"json", "json"}});
        if (const item* v = lm.find("timestamps")) {
            const std::string t = read_string(*v);
            if (t == "auto") out.log.timestamps = "auto";
            else out.log.timestamps = read_bool(*v) ? "true" : "false";
        }
    }
}

// Counts the documents of a YAML stream, building nothing; `second` is where the second
// document's root node starts (its start when it has none), as the error message shows it.
// It also keeps the collections open so far, so that an unclosed '[' or '{' can be named
// where it was opened rather than where yaml-cpp gave up (the end of the file, say).
class document_counter final : public YAML::EventHandler {
public:
    int documents = 0;
    YAML::Mark second = YAML::Mark::null_mark();
    struct open_collection {
        bool map = false;
        bool flow = false;
        YAML::Mark mark;
    };
    std::vector<open_collection> open;

    void OnDocumentStart(const YAML::Mark& mark) override
    {
        if (++documents == 2) second = mark;
    }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
    void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
    void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t, const std::string&) override
    {
        node(mark);
    }
    void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                         YAML::EmitterStyle::value style) override
    {
        node(mark);
        open.push_back({false, style == YAML::EmitterStyle::Flow, mark});
    }
    void OnSequenceEnd() override { close(); }
    void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                    YAML::EmitterStyle::value style) override
    {
        node(mark);
        open.push_back({true, style == YAML::EmitterStyle::Flow, mark});
    }
    void OnMapEnd() override { close(); }

private:
    void node(const YAML::Mark& mark)
    {
        if (documents == 2 && !root_seen_) second = mark;
        if (documents == 2) root_seen_ = true;
    }
    void close()
    {
        if (!open.empty()) open.pop_back();
    }
    bool root_seen_ = false;
};

std::vector<std::string_view> split_lines(std::string_view text)
{
    std::vector<std::string_view> lines;
    while (!text.empty()) {
        const auto nl = text.find('\n');
        lines.push_back(text.substr(0, nl));
        if (nl == std::string_view::npos) break;
        text.remove_prefix(nl + 1);
    }
    return lines;
}

std::string_view trimmed(std::string_view s)
{
    const auto first = s.find_first_not_of(" \t\r");
    if (first == std::string_view::npos) return {};
    return s.substr(first, s.find_last_not_of(" \t\r") - first + 1);
}

// The one-line message for a YAML syntax error. yaml-cpp's position is where it gave up,
// which is not always where the mistake is; three cases are pointed at better:
//  - a tab in the indentation (YAML allows only spaces there; yaml-cpp says "illegal map
//    value" or "illegal tab when looking for indentation");
//  - an unclosed '[' or '{' (yaml-cpp points at the end of the file or the next key);
//  - a key without its ':' ("hostname "a"" then "timeout: 5" on the next line is one
//    two-line key to YAML, and yaml-cpp blames the ':' on the second line).
std::string yaml_error(std::string_view text, const std::string& name, const YAML::Exception& e,
                       const document_counter* events)
{
    if (e.mark.is_null() || e.mark.line < 0) return fmt::format("{}: invalid YAML: {}", name, one_line(e.msg));
    const auto lines = split_lines(text);
    const auto at = static_cast<std::size_t>(e.mark.line);

    // A tab in the leading whitespace of the error's line or the one before.
    for (std::size_t l : {at, at - 1}) {
        if (l >= lines.size()) continue;  // also at == 0: at - 1 wraps
        const std::string_view line = lines[l];
        const auto indent_end = line.find_first_not_of(" \t");
        const std::string_view indent = line.substr(0, indent_end);
        if (const auto tab = indent.find('\t'); tab != std::string_view::npos && indent_end != std::string_view::npos)
            return fmt::format(
                "{}:{}: invalid YAML: tab characters are not allowed for indentation in YAML (column {})", name, l + 1,
                tab + 1);
    }

    const bool seq_flow = e.msg == YAML::ErrorMsg::END_OF_SEQ_FLOW;
    if ((seq_flow || e.msg == YAML::ErrorMsg::END_OF_MAP_FLOW) && events != nullptr) {
        for (auto it = events->open.rbegin(); it != events->open.rend(); ++it) {
            if (!it->flow || it->map == seq_flow || it->mark.is_null()) continue;
            return fmt::format("{}:{}: invalid YAML: {} (the '{}' at column {} is never closed)", name,
                               it->mark.line + 1, one_line(e.msg), seq_flow ? '[' : '{', it->mark.column + 1);
        }
    }

    if (e.msg == YAML::ErrorMsg::MAP_VALUE && at < lines.size()) {
        // The text before the ':' on this line is no key of its own ("timeout", not "a: b")...
        const std::string_view before = trimmed(lines[at].substr(0, static_cast<std::size_t>(e.mark.column)));
        const bool own_key = before.empty() || before.front() == '-' || before.find(':') != std::string_view::npos;
        // ...so it continues a line above that has no ':' (and is no list item or comment).
        std::size_t start = at;
        for (std::size_t l = at; !own_key && l-- > 0;) {
            const std::string_view prev = trimmed(lines[l]);
            if (prev.empty()) continue;
            if (prev.front() == '#' || prev.front() == '-' || prev.find(':') != std::string_view::npos ||
                prev.find_first_of("[]{}") != std::string_view::npos)
                break;
            start = l;
        }
        if (start != at)
            return fmt::format("{}:{}: invalid YAML: {} at line {} (column {}): is a ':' missing on line {}?", name,
                               start + 1, one_line(e.msg), at + 1, e.mark.column + 1, start + 1);
    }

    // At the very end of the file: the last line, rather than the one after it.
    if (at >= lines.size() && !lines.empty())
        return fmt::format("{}:{}: invalid YAML: {} (at the end of the file)", name, lines.size(), one_line(e.msg));
    return fmt::format("{}:{}: invalid YAML: {} (column {})", name, e.mark.line + 1, one_line(e.msg),
                       e.mark.column + 1);
}

}  // namespace

settings parse(std::string_view yaml_text, const std::filesystem::path& file, const std::filesystem::path& base_dir)
{
    const std::string name = file.string();
    std::error_code ec;
    fs::path base = base_dir.is_absolute() ? base_dir : fs::absolute(base_dir, ec);
    if (ec) base = base_dir;
    base = base.lexically_normal();

    // Not YAML::LoadAll: in yaml-cpp 0.7 a stray top-level ',' (the 1-byte file ",") makes it
    // return empty documents forever, until memory runs out (found by tests/fuzz/config_fuzz).
    // Count at most two documents with the event parser instead, then build the first.
    YAML::Node root;
    document_counter counter;
    try {
        std::istringstream in{std::string(yaml_text)};
        YAML::Parser parser(in);
        while (counter.documents < 2 && parser.HandleNextDocument(counter)) {}
        if (counter.documents > 1) {
            const YAML::Mark m = counter.second;
            if (m.is_null()) throw config_error(fmt::format("{}: invalid YAML: more than one document", name));
            throw config_error(fmt::format("{}:{}: invalid YAML: more than one document", name, m.line + 1));
        }
        if (counter.documents == 1) root = YAML::Load(std::string(yaml_text));
    } catch (const YAML::Exception& e) {
        throw config_error(yaml_error(yaml_text, name, e, &counter));
    }

    reader r(name, base);
    try {
        return r.read(root);
    } catch (const YAML::Exception& e) {
        // Not expected (every access is type-checked first); still one line, never a crash.
        throw config_error(fmt::format("{}: {}", name, one_line(e.what())));
    }
}

settings load_file(const std::filesystem::path& file)
{
    std::error_code ec;
    fs::path abs = fs::absolute(file, ec);
    if (ec) abs = file;
    abs = abs.lexically_normal();

    auto cannot_read = [&abs](std::string_view why) {
        return config_error(fmt::format("{}: cannot read: {}", abs.string(), why));
    };
    std::FILE* f = std::fopen(abs.c_str(), "rb");
    if (f == nullptr) {
        const int err = errno;
        // A SIGHUP reload after the privilege drop reads the file as server.user: say so.
        throw cannot_read(fmt::format("{}{}", std::strerror(err), err == EACCES ? not_root_note() : std::string()));
    }
    std::string text;
    char buf[8192];
    for (;;) {
        const std::size_t n = std::fread(buf, 1, sizeof buf, f);
        text.append(buf, n);
        if (text.size() > max_file_size) {
            std::fclose(f);
            throw cannot_read(fmt::format("larger than {} bytes", max_file_size));
        }
        if (n < sizeof buf) break;
    }
    const bool failed = std::ferror(f) != 0;
    const int err = errno;  // EISDIR for a folder
    std::fclose(f);
    if (failed) throw cannot_read(std::strerror(err));
    return parse(text, abs, abs.parent_path());
}

settings load_default()
{
    std::error_code ec;
    fs::path cwd = fs::current_path(ec);
    if (ec) cwd = "/";
    return parse(default_text(), "<embedded default>", cwd);
}

// --------------------------------------------------------------------------------------------
// Open relay warnings (issue 18). A relaying plugin passes each message on to other servers;
// on a public address, without an access plugin before it (or with one that lets everyone
// relay) anybody may send through it to any domain.
// --------------------------------------------------------------------------------------------

namespace {

// 127.0.0.0/8, ::1, ::ffff:127.x, localhost: reachable from this machine only.
bool loopback(const std::string& address)
{
    std::string a = address;
    if (a.size() >= 2 && a.front() == '[' && a.back() == ']') a = a.substr(1, a.size() - 2);
    unsigned char b[16] = {};
    if (::inet_pton(AF_INET, a.c_str(), b) == 1) return b[0] == 127;
    if (::inet_pton(AF_INET6, a.c_str(), b) == 1) {
        static constexpr unsigned char one[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        static constexpr unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        return std::equal(b, b + 16, one) || (std::equal(b, b + 12, mapped) && b[12] == 127);
    }
    std::string lower;
    for (const char c : a) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return lower == "localhost" || lower.ends_with(".localhost");
}

// The plugin's name: `name`, or the file name of `path` without ".so".
std::string plugin_name(const plugin_entry& e) { return e.name.empty() ? e.path.stem().string() : e.name; }

// The first relay_networks entry of an access plugin's config that matches every address
// ("0.0.0.0/0", "::/0"), or "".
std::string relays_for_everyone(const plugin_entry& access)
{
    const node* nets = access.config.get("relay_networks");
    if (nets == nullptr || nets->type != node::kind::sequence) return {};
    for (const node& n : nets->items) {
        if (n.type != node::kind::scalar) continue;
        const auto slash = n.scalar.find('/');
        if (slash != std::string::npos && n.scalar.substr(slash + 1) == "0") return n.scalar;
    }
    return {};
}

}  // namespace

std::vector<std::string> open_relay_warnings(const settings& s)
{
    std::vector<std::string> out;
    for (const listener& l : s.server.listen) {
        if (!l.path.empty() || loopback(l.address)) continue;  // a UNIX socket: this machine only
        const std::string where = l.address.find(':') != std::string::npos ? fmt::format("[{}]:{}", l.address, l.port)
                                                                           : fmt::format("{}:{}", l.address, l.port);
        const plugin_entry* access = nullptr;
        for (const plugin_entry& e : s.plugins) {
            const std::string name = plugin_name(e);
            if (name == "access" && access == nullptr) access = &e;
            if (name != "proxy" && name != "jetstream") continue;
            std::string reason;
            if (access == nullptr) reason = fmt::format("no access plugin before {} ({})", name, e.key);
            else if (const std::string all = relays_for_everyone(*access); !all.empty())
                reason =
                    fmt::format("the access plugin ({}) lets everyone relay: relay_networks has {}", access->key, all);
            if (reason.empty()) continue;
            out.push_back(fmt::format("event=open_relay listener={} plugin={} reason=\"{}\" action=\"{}\"", where, name,
                                      reason,
                                      "any client may send to any domain through it; put an access plugin with "
                                      "local_domains and relay_networks before it"));
        }
    }
    return out;
}

std::vector<std::string> discard_warnings(const settings& s)
{
    // The bundled plugins that never keep a message: each says 250 (or passes the message on)
    // without storing or relaying it. `sink` discards on purpose; any other plugin may keep it.
    static constexpr std::string_view passers[] = {"debugging", "ping", "authfile", "access", "policy", "milter"};
    std::string names;
    for (const plugin_entry& e : s.plugins) {
        const std::string name = plugin_name(e);
        if (std::find(std::begin(passers), std::end(passers), name) == std::end(passers)) return {};
        names += (names.empty() ? "" : ",") + name;
    }
    return {
        fmt::format("event=no_delivery plugins=\"{}\" reason=\"no plugin in the chain stores or relays a "
                    "message, yet each message is answered 250, then kept nowhere\" action=\"add a delivering plugin "
                    "(maildir, mbox, proxy, jetstream or your own), or sink to discard on purpose\"",
                    names.empty() ? std::string("(none)") : names)};
}

}  // namespace asiosmtpd::config
