// SPDX-License-Identifier: Apache-2.0
// config: the YAML file (docs/configuration.md) turned into validated, immutable structs.
// The only user of yaml-cpp in the project. Every problem is a config_error naming the file,
// the key (dotted path, e.g. "server.listen[0].port"), the line and what is wrong.
// Plugin `config:` subtrees are kept as a neutral tree (node) handed to plugins as data.
#pragma once

#include "config/node.hpp"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace asiosmtpd::config {

/// A start-up problem with the configuration. what() is the one line printed before exit 1:
/// "<file>:<line>: <key>: <problem>" (line omitted when unknown).
class config_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

enum class protocol { smtp, lmtp };
enum class tls_mode { none, starttls, implicit };

struct listener {
    std::string address = "127.0.0.1";
    std::uint16_t port = 8025;
    config::protocol protocol = protocol::smtp;
    tls_mode tls = tls_mode::none;
    bool proxy_protocol = false;
    bool reuse_port = false;            // SO_REUSEPORT: several processes on one host share the port
    std::filesystem::path path;         // a UNIX socket listener (absolute); empty: TCP (address, port)
    std::uint32_t mode = 0660;          // the UNIX socket file's permissions
    std::string key = "server.listen";  // "server.listen[1]" for messages ("server.listen": the default)
    std::uint32_t line = 0;             // its line in the file (0: the default listener)
};

/// command_call_limit: absent/null = no limits; an int = that budget for every verb;
/// a map = per-verb budgets with "*" as the default for other verbs (20 when "*" is absent,
/// aiosmtpd's CALL_LIMIT_DEFAULT).
struct call_limits {
    bool enabled = false;
    std::map<std::string, std::uint32_t> per_verb;  // upper-cased verbs
    std::uint32_t default_limit = 20;
};

/// server.user / server.group: the account the executable switches to for good when it is
/// started as root, once its listeners are bound and its TLS keys loaded, before any plugin
/// code runs (os/privileges.hpp). Names are resolved when the config is loaded, so that an
/// unknown one is a config error naming its line.
struct run_as {
    std::string user;       // the name in the user database
    std::uint32_t uid = 0;  // never 0 (root is refused)
    std::string group;      // server.group, else the user's primary group
    std::uint32_t gid = 0;
    bool group_given = false;  // server.group was set (else: primary group)
    std::string user_at;       // "<file>:<line>" of server.user, for messages
    std::string group_at;      // "<file>:<line>" of server.group ("" if not given)
};

struct server_settings {
    std::string hostname;              // empty in the file -> machine's FQDN (filled by load)
    std::optional<std::string> ident;  // null -> "asiosmtpd <version>"
    std::vector<listener> listen{listener{}};
    std::uint64_t data_size_limit = 33554432;  // 0 = no limit
    std::uint32_t command_size_limit = 512;
    bool enable_smtputf8 = false;
    bool decode_data = false;
    bool require_starttls = false;
    bool auth_required = false;
    bool auth_require_tls = true;
    std::uint32_t auth_max_failures = 3;  // failed AUTHs in a session before 421; 0 = no limit
    double auth_failure_delay = 1;        // seconds each failed AUTH answer waits (>= 0)
    bool advertise_pipelining = false;
    bool enable_dsn = false;                    // DSN (RFC 3461)
    bool enable_enhanced_status_codes = false;  // ENHANCEDSTATUSCODES (RFC 2034)
    call_limits command_call_limit;
    double timeout = 300;                              // seconds, > 0
    std::uint64_t data_min_rate = 500;                 // bytes/s a message must keep up over each timeout window
    std::uint64_t spool_threshold = 1024 * 1024;       // a message held for editors beyond this goes to a file
    bool received_header = false;                      // a Received: field tops each message plugins see
    bool enable_chunking = false;                      // CHUNKING + BINARYMIME (RFC 3030): BDAT
    std::filesystem::path spool_directory;             // where; empty: $TMPDIR or /tmp
    double tls_handshake_timeout = 30;                 // seconds, > 0
    double proxy_protocol_timeout = 10;                // seconds to receive a PROXY header, > 0
    std::uint32_t max_connections = 10000;             // >= 1
    std::uint32_t max_tls_handshakes = 1000;           // TLS handshakes in progress at once; 0 = no limit
    std::uint32_t max_tls_handshakes_per_client = 20;  // the same per client address (IPv6: per /64); 0 = no limit
    std::uint32_t workers = 0;                         // 0 = one per core
    double shutdown_grace = 30;                        // seconds, >= 0
    std::string log_level = "info";                    // debug | info | warn | error (--log-level wins)
    std::optional<run_as> user;                        // server.user (+ server.group); absent: no switch
    bool allow_root = true;                            // false: refuse to start as root without server.user
    std::string allow_root_at;                         // "<file>:<line>" of server.allow_root ("" if absent)
    std::vector<std::string> xclient_networks;         // CIDRs that may use XCLIENT; empty: not offered
};

enum class tls_version { v1_2, v1_3 };

struct tls_settings {
    std::filesystem::path certificate;            // absolute after load (relative to the file); PEM chain
    std::filesystem::path private_key;            // PEM
    tls_version min_version = tls_version::v1_2;  // "1.2" | "1.3"; older versions are never offered
    std::string ciphers;                          // TLS 1.2 cipher list (OpenSSL syntax); empty: ours
    std::string ciphersuites;                     // TLS 1.3 suites (OpenSSL syntax); empty: OpenSSL's
    bool request_client_certificate = false;      // ask for (never require) a client certificate
    bool session_resumption = true;               // session tickets (and OpenSSL's session cache)
};

struct plugin_entry {
    std::string name;               // set when given by name
    std::filesystem::path path;     // set when given by path (absolute after load)
    node config;                    // the `config:` subtree (null when absent)
    double timeout = 30;            // seconds a PENDING hook may take (> 0)
    std::string key;                // "plugins[1]" for error messages
    std::uint32_t line = 0;         // lines in the file for messages (0: unknown): the entry,
    std::uint32_t name_line = 0;    // its `name:`,
    std::uint32_t config_line = 0;  // its `config:` key (0: none)
    /// isolation: process runs the plugin in a child process (plugin/isolation/adapter.hpp);
    /// memory_limit: that child's memory in bytes (a cgroup's memory.max where the server can
    /// make one, else RLIMIT_AS), 0 for none. cpu_limit: seconds of CPU one hook call may use in
    /// the child (0: none). user: the account the child runs as (absent: the server's).
    enum class isolation_mode { none, process };
    isolation_mode isolation = isolation_mode::none;
    std::uint64_t memory_limit = 0;
    double cpu_limit = 0;
    std::optional<run_as> user;
};

/// metrics: {listen: "127.0.0.1:9125"}: Prometheus text format over HTTP at /metrics.
struct metrics_settings {
    std::string address = "127.0.0.1";
    std::uint16_t port = 9125;
    std::uint32_t line = 0;  // the line of metrics.listen (0: not given)
};

struct log_settings {
    std::string format = "text";      // text | json
    std::string timestamps = "auto";  // auto (on unless stderr is the journal) | true | false
};

struct settings {
    std::filesystem::path file;      // the config file ("<embedded default>" if none)
    std::filesystem::path base_dir;  // relative paths resolve against this
    server_settings server;
    std::optional<tls_settings> tls;
    std::vector<std::filesystem::path> plugin_path;  // absolute after load
    std::vector<plugin_entry> plugins;
    log_settings log;
    std::optional<metrics_settings> metrics;  // absent: no metrics endpoint
};

/// Every key the parser accepts, as dotted paths: "server.timeout", "server.listen[].port",
/// "plugins[].config" (a plugin's own `config:` keys are the plugin's). The documentation test
/// checks that docs/configuration.md describes each.
std::vector<std::string> known_keys();

/// Parse and validate YAML text. `file` names it in errors; relative paths resolve against
/// `base_dir`. Throws config_error.
settings parse(std::string_view yaml_text, const std::filesystem::path& file, const std::filesystem::path& base_dir);

/// Read and parse a file (base_dir = its folder). Throws config_error (also for an unreadable file).
settings load_file(const std::filesystem::path& file);

/// The embedded default (conf/asiosmtpd.yaml compiled in); base_dir = current directory.
settings load_default();

/// The text of the embedded default configuration.
std::string_view default_text() noexcept;

/// Start-up warnings of an open relay: for each listener on an address that is not loopback,
/// each relaying plugin (`proxy`, `jetstream`) with no `access` plugin before it in the chain,
/// or after an `access` plugin whose relay_networks has a /0 entry. One log line's text each
/// ("event=open_relay listener=... plugin=... reason=\"...\" ..."); empty when none applies.
std::vector<std::string> open_relay_warnings(const settings& s);
/// A chain in which no plugin keeps a message (none, or only bundled plugins that never store
/// or relay one: debugging, ping, authfile, access, policy, milter), while each message gets
/// 250: "event=no_delivery plugins=\"...\" ..."; empty otherwise (sink is a choice, and any
/// other plugin may deliver).
std::vector<std::string> discard_warnings(const settings& s);

}  // namespace asiosmtpd::config
