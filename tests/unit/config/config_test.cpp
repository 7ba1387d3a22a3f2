// SPDX-License-Identifier: Apache-2.0
// Unit tests for config/config.hpp: defaults, every key, every error class with its exact
// one-line message, relative paths, plugin config trees and command call limits.
#include "config/config.hpp"

#include <gtest/gtest.h>

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>

namespace {

namespace fs = std::filesystem;
using namespace asiosmtpd::config;

settings parse_text(std::string_view yaml, const fs::path& base = "/base") { return parse(yaml, "t.yaml", base); }

// The message of the config_error that parsing `yaml` must throw.
std::string error_of(std::string_view yaml, const fs::path& base = "/base")
{
    try {
        parse_text(yaml, base);
    } catch (const config_error& e) {
        return e.what();
    }
    ADD_FAILURE() << "no config_error for:\n" << yaml;
    return {};
}

// A fresh folder under the system temp folder, removed afterwards.
class temp_dir {
public:
    temp_dir()
    {
        static std::atomic<int> counter{0};
        path_ = fs::temp_directory_path() /
                ("asiosmtpd_config_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~temp_dir()
    {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;

    const fs::path& path() const { return path_; }

    fs::path write(const fs::path& name, std::string_view text) const
    {
        const fs::path p = path_ / name;
        fs::create_directories(p.parent_path());
        std::ofstream out(p, std::ios::binary);
        out << text;
        return p;
    }

private:
    fs::path path_;
};

void expect_default_server(const server_settings& s)
{
    EXPECT_FALSE(s.hostname.empty());
    EXPECT_FALSE(s.ident.has_value());
    ASSERT_EQ(s.listen.size(), 1u);
    EXPECT_EQ(s.listen[0].address, "127.0.0.1");
    EXPECT_EQ(s.listen[0].port, 8025);
    EXPECT_EQ(s.listen[0].protocol, protocol::smtp);
    EXPECT_EQ(s.listen[0].tls, tls_mode::none);
    EXPECT_FALSE(s.listen[0].proxy_protocol);
    EXPECT_EQ(s.data_size_limit, 33554432u);
    EXPECT_EQ(s.command_size_limit, 512u);
    EXPECT_FALSE(s.enable_smtputf8);
    EXPECT_FALSE(s.decode_data);
    EXPECT_FALSE(s.require_starttls);
    EXPECT_FALSE(s.auth_required);
    EXPECT_TRUE(s.auth_require_tls);
    EXPECT_FALSE(s.advertise_pipelining);
    EXPECT_FALSE(s.command_call_limit.enabled);
    EXPECT_TRUE(s.command_call_limit.per_verb.empty());
    EXPECT_EQ(s.timeout, 300);
    EXPECT_EQ(s.data_min_rate, 500u);
    EXPECT_EQ(s.tls_handshake_timeout, 30);
    EXPECT_EQ(s.max_connections, 10000u);
    EXPECT_EQ(s.max_tls_handshakes, 1000u);
    EXPECT_EQ(s.max_tls_handshakes_per_client, 20u);
    EXPECT_EQ(s.workers, 0u);
    EXPECT_EQ(s.shutdown_grace, 30);
}

// ---- node ----------------------------------------------------------------------------------

TEST(config_node, get_finds_map_keys_only)
{
    node leaf;
    leaf.type = node::kind::scalar;
    leaf.scalar = "v";
    node m;
    m.type = node::kind::map;
    m.keys = {"a", "b"};
    m.items = {node{}, leaf};
    ASSERT_NE(m.get("b"), nullptr);
    EXPECT_EQ(m.get("b")->scalar, "v");
    ASSERT_NE(m.get("a"), nullptr);
    EXPECT_EQ(m.get("a")->type, node::kind::null);
    EXPECT_EQ(m.get("c"), nullptr);
    EXPECT_EQ(leaf.get("a"), nullptr);
    EXPECT_EQ(node{}.get("a"), nullptr);
}

// ---- defaults ------------------------------------------------------------------------------

TEST(config_defaults, empty_documents_give_the_header_defaults)
{
    for (const std::string_view text :
         {"", "# only a comment\n", "---\n", "server:\ntls:\nplugins:\nplugin_path:\n", "server: ~\n"}) {
        SCOPED_TRACE(text);
        const settings s = parse_text(text);
        EXPECT_EQ(s.file, "t.yaml");
        EXPECT_EQ(s.base_dir, "/base");
        expect_default_server(s.server);
        EXPECT_FALSE(s.tls.has_value());
        EXPECT_TRUE(s.plugin_path.empty());
        EXPECT_TRUE(s.plugins.empty());
    }
}

TEST(config_defaults, embedded_default_matches_the_header)
{
    ASSERT_FALSE(default_text().empty());
    const settings s = load_default();
    EXPECT_EQ(s.file, "<embedded default>");
    EXPECT_EQ(s.base_dir, fs::current_path().lexically_normal());
    expect_default_server(s.server);
    EXPECT_FALSE(s.tls.has_value());
    EXPECT_TRUE(s.plugin_path.empty());
    ASSERT_EQ(s.plugins.size(), 1u);
    EXPECT_EQ(s.plugins[0].name, "debugging");
    EXPECT_TRUE(s.plugins[0].path.empty());
    EXPECT_EQ(s.plugins[0].key, "plugins[0]");
    EXPECT_EQ(s.plugins[0].timeout, 30);
    const node* stream = s.plugins[0].config.get("stream");
    ASSERT_NE(stream, nullptr);
    EXPECT_EQ(stream->type, node::kind::scalar);
    EXPECT_EQ(stream->scalar, "stdout");
}

TEST(config_defaults, relative_base_dir_becomes_absolute)
{
    const settings s = parse_text("", "some/dir/../conf");
    EXPECT_EQ(s.base_dir, (fs::current_path() / "some/conf").lexically_normal());
}

TEST(config_defaults, null_or_empty_hostname_is_the_machine_name)
{
    const std::string fqdn = parse_text("").server.hostname;
    EXPECT_FALSE(fqdn.empty());
    EXPECT_EQ(parse_text("server:\n  hostname: null\n").server.hostname, fqdn);
    EXPECT_EQ(parse_text("server:\n  hostname:\n").server.hostname, fqdn);
    EXPECT_EQ(parse_text("server:\n  hostname: \"\"\n").server.hostname, fqdn);
}

// ---- every key -----------------------------------------------------------------------------

TEST(config_keys, every_key_is_read)
{
    temp_dir dir;
    dir.write("certs/cert.pem", "cert");
    dir.write("certs/key.pem", "key");
    const std::string yaml = R"(server:
  hostname: mail.example.org
  ident: ESMTP ready
  listen:
    - address: 0.0.0.0
      port: 25
      protocol: smtp
      tls: starttls
      proxy_protocol: true
    - address: "::1"
      port: 24
      protocol: lmtp
      tls: none
    - address: 127.0.0.1
      port: 0
      tls: implicit
  data_size_limit: 0
  command_size_limit: 1024
  enable_smtputf8: yes
  decode_data: true
  require_starttls: True
  auth_required: on
  auth_require_tls: false
  advertise_pipelining: true
  command_call_limit: 7
  timeout: 1.5
  tls_handshake_timeout: 10
  max_connections: 1
  max_tls_handshakes: 0
  max_tls_handshakes_per_client: 3
  workers: 1024
  shutdown_grace: 0
tls:
  certificate: certs/cert.pem
  private_key: ./certs/../certs/key.pem
plugin_path: [lib, /opt/plugins/]
plugins:
  - name: sink
  - path: my/plugin.so
    timeout: 2.5
    config: { threshold: 5 }
)";
    const settings s = parse_text(yaml, dir.path());
    const server_settings& v = s.server;
    EXPECT_EQ(v.hostname, "mail.example.org");
    EXPECT_EQ(v.ident, "ESMTP ready");
    ASSERT_EQ(v.listen.size(), 3u);
    EXPECT_EQ(v.listen[0].address, "0.0.0.0");
    EXPECT_EQ(v.listen[0].port, 25);
    EXPECT_EQ(v.listen[0].protocol, protocol::smtp);
    EXPECT_EQ(v.listen[0].tls, tls_mode::starttls);
    EXPECT_TRUE(v.listen[0].proxy_protocol);
    EXPECT_EQ(v.listen[1].address, "::1");
    EXPECT_EQ(v.listen[1].port, 24);
    EXPECT_EQ(v.listen[1].protocol, protocol::lmtp);
    EXPECT_EQ(v.listen[1].tls, tls_mode::none);
    EXPECT_FALSE(v.listen[1].proxy_protocol);
    EXPECT_EQ(v.listen[2].port, 0);
    EXPECT_EQ(v.listen[2].protocol, protocol::smtp);
    EXPECT_EQ(v.listen[2].tls, tls_mode::implicit);
    EXPECT_EQ(v.data_size_limit, 0u);
    EXPECT_EQ(v.command_size_limit, 1024u);
    EXPECT_TRUE(v.enable_smtputf8);
    EXPECT_TRUE(v.decode_data);
    EXPECT_TRUE(v.require_starttls);
    EXPECT_TRUE(v.auth_required);
    EXPECT_FALSE(v.auth_require_tls);
    EXPECT_TRUE(v.advertise_pipelining);
    EXPECT_TRUE(v.command_call_limit.enabled);
    EXPECT_EQ(v.command_call_limit.default_limit, 7u);
    EXPECT_DOUBLE_EQ(v.timeout, 1.5);
    EXPECT_DOUBLE_EQ(v.tls_handshake_timeout, 10);
    EXPECT_EQ(v.max_connections, 1u);
    EXPECT_EQ(v.max_tls_handshakes, 0u);
    EXPECT_EQ(v.max_tls_handshakes_per_client, 3u);
    EXPECT_EQ(v.workers, 1024u);
    EXPECT_DOUBLE_EQ(v.shutdown_grace, 0);
    ASSERT_TRUE(s.tls.has_value());
    EXPECT_EQ(s.tls->certificate, dir.path() / "certs/cert.pem");
    EXPECT_EQ(s.tls->private_key, dir.path() / "certs/key.pem");
    ASSERT_EQ(s.plugin_path.size(), 2u);
    EXPECT_EQ(s.plugin_path[0], dir.path() / "lib");
    EXPECT_EQ(s.plugin_path[1], "/opt/plugins");
    ASSERT_EQ(s.plugins.size(), 2u);
    EXPECT_EQ(s.plugins[0].name, "sink");
    EXPECT_EQ(s.plugins[0].key, "plugins[0]");
    EXPECT_EQ(s.plugins[0].config.type, node::kind::null);
    EXPECT_DOUBLE_EQ(s.plugins[0].timeout, 30);
    EXPECT_TRUE(s.plugins[1].name.empty());
    EXPECT_EQ(s.plugins[1].path, dir.path() / "my/plugin.so");
    EXPECT_EQ(s.plugins[1].key, "plugins[1]");
    EXPECT_DOUBLE_EQ(s.plugins[1].timeout, 2.5);
    ASSERT_NE(s.plugins[1].config.get("threshold"), nullptr);
    EXPECT_EQ(s.plugins[1].config.get("threshold")->scalar, "5");
}

TEST(config_keys, numbers_in_their_yaml_spellings)
{
    const settings s = parse_text("server:\n  timeout: 1e3\n  shutdown_grace: .5\n  workers: +3\n"
                                  "  tls_handshake_timeout: !!float 2\n  max_connections: !!int 9\n");
    EXPECT_DOUBLE_EQ(s.server.timeout, 1000);
    EXPECT_DOUBLE_EQ(s.server.shutdown_grace, 0.5);
    EXPECT_EQ(s.server.workers, 3u);
    EXPECT_DOUBLE_EQ(s.server.tls_handshake_timeout, 2);
    EXPECT_EQ(s.server.max_connections, 9u);
    EXPECT_EQ(parse_text("server:\n  data_size_limit: 18446744073709551615\n").server.data_size_limit,
              18446744073709551615u);
    EXPECT_EQ(parse_text("server:\n  listen:\n    - port: 65535\n").server.listen[0].port, 65535);
}

TEST(config_keys, ident_may_be_any_text)
{
    EXPECT_EQ(parse_text("server:\n  ident: \"\"\n").server.ident, "");
    EXPECT_EQ(parse_text("server:\n  ident: 1.0\n").server.ident, "1.0");
    EXPECT_FALSE(parse_text("server:\n  ident: ~\n").server.ident.has_value());
}

TEST(config_keys, an_empty_plugin_list_is_allowed)
{
    EXPECT_TRUE(parse_text("plugins: []\n").plugins.empty());
    EXPECT_TRUE(parse_text("plugin_path: []\n").plugin_path.empty());
}

// ---- error classes, exact messages ---------------------------------------------------------

TEST(config_errors, port_not_a_number_names_port_and_line)
{
    EXPECT_EQ(error_of("server:\n  listen:\n    - address: 127.0.0.1\n      port: notaport\n"),
              R"(t.yaml:4: server.listen[0].port: expected an integer 0..65535, got "notaport")");
}

TEST(config_errors, integers)
{
    EXPECT_EQ(error_of("server:\n  listen:\n    - port: 65536\n"),
              R"(t.yaml:3: server.listen[0].port: expected an integer 0..65535, got "65536" (too large))");
    EXPECT_EQ(error_of("server:\n  listen:\n    - port: -1\n"),
              R"(t.yaml:3: server.listen[0].port: expected an integer 0..65535, got "-1")");
    EXPECT_EQ(error_of("server:\n  listen:\n    - port: \"25\"\n"),
              R"(t.yaml:3: server.listen[0].port: expected an integer 0..65535, got the string "25")");
    EXPECT_EQ(error_of("server:\n  listen:\n    - port:\n"),
              R"(t.yaml:3: server.listen[0].port: expected an integer 0..65535, got null)");
    EXPECT_EQ(error_of("server:\n  workers: 12abc\n"),
              R"(t.yaml:2: server.workers: expected an integer 0..1024, got "12abc")");
    EXPECT_EQ(error_of("server:\n  workers: 1.0\n"),
              R"(t.yaml:2: server.workers: expected an integer 0..1024, got "1.0")");
    EXPECT_EQ(error_of("server:\n  workers: 0x10\n"),
              R"(t.yaml:2: server.workers: expected an integer 0..1024, got "0x10")");
    EXPECT_EQ(error_of("server:\n  workers: 1025\n"),
              R"(t.yaml:2: server.workers: expected an integer 0..1024, got "1025" (too large))");
    EXPECT_EQ(error_of("server:\n  workers: [1]\n"),
              R"(t.yaml:2: server.workers: expected an integer 0..1024, got a sequence)");
    EXPECT_EQ(error_of("server:\n  command_size_limit: 63\n"),
              R"(t.yaml:2: server.command_size_limit: expected an integer 64..65536, got "63")");
    EXPECT_EQ(error_of("server:\n  command_size_limit: 65537\n"),
              R"(t.yaml:2: server.command_size_limit: expected an integer 64..65536, got "65537" (too large))");
    EXPECT_EQ(error_of("server:\n  max_connections: 0\n"),
              R"(t.yaml:2: server.max_connections: expected an integer >= 1, got "0")");
    EXPECT_EQ(error_of("server:\n  max_connections: 4294967296\n"),
              R"(t.yaml:2: server.max_connections: expected an integer >= 1, got "4294967296" (too large))");
    EXPECT_EQ(error_of("server:\n  max_tls_handshakes: -1\n"),
              R"(t.yaml:2: server.max_tls_handshakes: expected an integer >= 0, got "-1")");
    EXPECT_EQ(
        error_of("server:\n  max_tls_handshakes_per_client: 4294967296\n"),
        R"(t.yaml:2: server.max_tls_handshakes_per_client: expected an integer >= 0, got "4294967296" (too large))");
    EXPECT_EQ(error_of("server:\n  max_tls_handshakes_per_client: many\n"),
              R"(t.yaml:2: server.max_tls_handshakes_per_client: expected an integer >= 0, got "many")");
    EXPECT_EQ(error_of("server:\n  data_size_limit: 18446744073709551616\n"),
              R"(t.yaml:2: server.data_size_limit: expected an integer >= 0, got "18446744073709551616" (too large))");
    EXPECT_EQ(error_of("server:\n  data_size_limit: -5\n"),
              R"(t.yaml:2: server.data_size_limit: expected an integer >= 0, got "-5")");
}

TEST(config_errors, booleans)
{
    EXPECT_EQ(error_of("server:\n  decode_data: maybe\n"),
              R"(t.yaml:2: server.decode_data: expected true or false, got "maybe")");
    EXPECT_EQ(error_of("server:\n  decode_data: \"true\"\n"),
              R"(t.yaml:2: server.decode_data: expected true or false, got the string "true")");
    EXPECT_EQ(error_of("server:\n  listen:\n    - proxy_protocol: 1\n"),
              R"(t.yaml:3: server.listen[0].proxy_protocol: expected true or false, got "1")");
    EXPECT_EQ(error_of("server:\n  auth_required:\n"),
              R"(t.yaml:2: server.auth_required: expected true or false, got null)");
}

TEST(config_errors, seconds)
{
    EXPECT_EQ(error_of("server:\n  timeout: 0\n"),
              R"(t.yaml:2: server.timeout: expected seconds > 0 and <= 31536000, got "0")");
    EXPECT_EQ(error_of("server:\n  tls_handshake_timeout: soon\n"),
              R"(t.yaml:2: server.tls_handshake_timeout: expected seconds > 0 and <= 31536000, got "soon")");
    EXPECT_EQ(error_of("server:\n  timeout: .inf\n"),
              R"(t.yaml:2: server.timeout: expected seconds > 0 and <= 31536000, got ".inf")");
    EXPECT_EQ(error_of("server:\n  timeout: 1e300\n"),
              R"(t.yaml:2: server.timeout: expected seconds > 0 and <= 31536000, got "1e300")");
    EXPECT_EQ(error_of("server:\n  shutdown_grace: -1\n"),
              R"(t.yaml:2: server.shutdown_grace: expected seconds >= 0 and <= 31536000, got "-1")");
    EXPECT_EQ(error_of("server:\n  data_min_rate: -5\n"),
              R"(t.yaml:2: server.data_min_rate: expected an integer 0..1099511627776, got "-5")");
    EXPECT_EQ(parse_text("server:\n  data_min_rate: 0\n").server.data_min_rate, 0u);
    EXPECT_EQ(error_of("plugins:\n  - name: sink\n    timeout: 0\n"),
              R"(t.yaml:3: plugins[0].timeout: expected seconds > 0 and <= 31536000, got "0")");
}

TEST(config_errors, choices_and_strings)
{
    EXPECT_EQ(error_of("server:\n  listen:\n    - protocol: esmtp\n"),
              R"(t.yaml:3: server.listen[0].protocol: expected one of smtp, lmtp, got "esmtp")");
    EXPECT_EQ(error_of("server:\n  listen:\n    - tls: ssl\n"),
              R"(t.yaml:3: server.listen[0].tls: expected one of none, starttls, implicit, got "ssl")");
    EXPECT_EQ(error_of("server:\n  listen:\n    - address: \"\"\n"),
              R"(t.yaml:3: server.listen[0].address: expected an address or host name, got the string "")");
    EXPECT_EQ(error_of("server:\n  listen:\n    - address: {a: 1}\n"),
              R"(t.yaml:3: server.listen[0].address: expected a string, got a mapping)");
    EXPECT_EQ(
        error_of("server:\n  hostname: mail example\n"),
        R"(t.yaml:2: server.hostname: expected a host name without spaces or control characters, got "mail example")");
    EXPECT_EQ(error_of("server:\n  ident: \"a\\r\\nb\"\n"),
              R"(t.yaml:2: server.ident: expected text without control characters, got the string "a\r\nb")");
    EXPECT_EQ(error_of("server:\n  ident: [x]\n"),
              R"(t.yaml:2: server.ident: expected a string or null, got a sequence)");
}

TEST(config_errors, long_values_are_cut)
{
    const std::string v(100, 'x');
    EXPECT_EQ(error_of("server:\n  workers: " + v + "\n"),
              "t.yaml:2: server.workers: expected an integer 0..1024, got \"" + std::string(60, 'x') + "\"...");
}

TEST(config_errors, unknown_keys_at_every_level)
{
    EXPECT_EQ(error_of("server: {}\nlisten: []\n"), "t.yaml:2: listen: unknown key");
    EXPECT_EQ(error_of("server:\n  hostname: a\n  port: 25\n"), "t.yaml:3: server.port: unknown key");
    EXPECT_EQ(error_of("server:\n  listen:\n    - port: 25\n    - port: 26\n      tsl: none\n"),
              "t.yaml:5: server.listen[1].tsl: unknown key (did you mean 'tls'?)");
    EXPECT_EQ(error_of("tls:\n  certificate: c\n  private_key: k\n  ca: x\n"), "t.yaml:4: tls.ca: unknown key");
    EXPECT_EQ(error_of("plugins:\n  - name: sink\n    settings: {}\n"), "t.yaml:3: plugins[0].settings: unknown key");
    EXPECT_EQ(error_of("server:\n  Timeout: 5\n"), "t.yaml:2: server.Timeout: unknown key (did you mean 'timeout'?)");
    EXPECT_EQ(error_of("[a]: 1\n"), "t.yaml:1: (document): expected a plain key, got a sequence");
}

TEST(config_errors, duplicate_keys)
{
    EXPECT_EQ(error_of("server:\n  timeout: 5\n  timeout: 6\n"), "t.yaml:3: server.timeout: duplicate key");
    EXPECT_EQ(error_of("server: {}\nserver: {}\n"), "t.yaml:2: server: duplicate key");
    EXPECT_EQ(error_of("server:\n  command_call_limit: {NOOP: 1, NOOP: 2}\n"),
              "t.yaml:2: server.command_call_limit.NOOP: duplicate key (verbs are case-insensitive)");
    EXPECT_EQ(error_of("plugins:\n  - name: x\n    config: {a: 1, a: 2}\n"),
              "t.yaml:3: plugins[0].config.a: duplicate key");
}

TEST(config_errors, wrong_shapes)
{
    EXPECT_EQ(error_of("- a\n- b\n"), "t.yaml:1: (document): expected a mapping, got a sequence");
    EXPECT_EQ(error_of("hello\n"), R"(t.yaml:1: (document): expected a mapping, got "hello")");
    EXPECT_EQ(error_of("server: [1]\n"), "t.yaml:1: server: expected a mapping, got a sequence");
    EXPECT_EQ(error_of("server:\n  listen: []\n"),
              "t.yaml:2: server.listen: expected a non-empty sequence, got an empty sequence");
    EXPECT_EQ(error_of("server:\n  listen: 5\n"), R"(t.yaml:2: server.listen: expected a non-empty sequence, got "5")");
    EXPECT_EQ(error_of("server:\n  listen:\n    - 127.0.0.1:25\n"),
              R"(t.yaml:3: server.listen[0]: expected a mapping, got "127.0.0.1:25")");
    EXPECT_EQ(error_of("plugins: {name: sink}\n"), "t.yaml:1: plugins: expected a sequence, got a mapping");
    EXPECT_EQ(error_of("plugins:\n  - sink\n"), R"(t.yaml:2: plugins[0]: expected a mapping, got "sink")");
    EXPECT_EQ(error_of("plugin_path: lib\n"), R"(t.yaml:1: plugin_path: expected a sequence, got "lib")");
    EXPECT_EQ(error_of("plugin_path: [\"\"]\n"), "t.yaml:1: plugin_path[0]: expected a path, got an empty string");
    EXPECT_EQ(error_of("tls: yes\n"), R"(t.yaml:1: tls: expected a mapping, got "yes")");
}

TEST(config_errors, duplicate_listeners)
{
    EXPECT_EQ(error_of("server:\n  listen:\n    - port: 25\n    - address: 127.0.0.1\n      port: 25\n"),
              "t.yaml:4: server.listen[1]: same address and port as server.listen[0]");
    // Two ephemeral ports never clash.
    EXPECT_EQ(parse_text("server:\n  listen:\n    - port: 0\n    - port: 0\n").server.listen.size(), 2u);
}

TEST(config_errors, yaml_syntax)
{
    // An unclosed flow collection is named where it was opened, not at the end of the file.
    EXPECT_EQ(error_of("server:\n  listen: [1\n"),
              "t.yaml:2: invalid YAML: end of sequence flow not found (the '[' at column 11 is never closed)");
    EXPECT_EQ(error_of("server: a: b\n"), "t.yaml:1: invalid YAML: illegal map value (column 10)");
    EXPECT_EQ(error_of("server: {}\n---\nserver: {}\n"), "t.yaml:3: invalid YAML: more than one document");
}

// Issue 23: yaml-cpp's position is where it gave up; these point at the mistake.
TEST(config_errors, yaml_syntax_points_at_the_mistake)
{
    // A tab in the indentation says so (yaml-cpp: "illegal map value" / "illegal tab ...").
    EXPECT_EQ(error_of("server:\n\thostname: mx\n"),
              "t.yaml:2: invalid YAML: tab characters are not allowed for indentation in YAML (column 1)");
    EXPECT_EQ(error_of("server:\n  hostname: mx\n\ttimeout: 5\n"),
              "t.yaml:3: invalid YAML: tab characters are not allowed for indentation in YAML (column 1)");
    EXPECT_EQ(error_of("server:\n  listen:\n  \t- port: 25\n"),
              "t.yaml:3: invalid YAML: tab characters are not allowed for indentation in YAML (column 3)");
    // A tab inside a value is no indentation: the usual message.
    EXPECT_EQ(error_of("server: a\t: b: c\n"), "t.yaml:1: invalid YAML: illegal map value (column 11)");
    // An unclosed '{' or '[' is named where it opens, not at the next entry or the end of the file.
    EXPECT_EQ(error_of("server:\n  listen:\n    - {port: 25\n    - port: 26\n"),
              "t.yaml:3: invalid YAML: end of map flow not found (the '{' at column 7 is never closed)");
    EXPECT_EQ(error_of("plugins:\n  - name: sink\n    config: [a, b\n\nlog: {}\n"),
              "t.yaml:3: invalid YAML: end of sequence flow not found (the '[' at column 13 is never closed)");
    // A key without its ':' runs on into the next line, where yaml-cpp blames the ':'.
    EXPECT_EQ(error_of("server:\n  hostname \"mx\"\n  timeout: 5\n"),
              "t.yaml:2: invalid YAML: illegal map value at line 3 (column 10): is a ':' missing on line 2?");
    // An over-indented key after a key with a value is that line's mistake, as yaml-cpp says.
    EXPECT_EQ(error_of("server:\n  hostname: mx\n    timeout: 5\n"),
              "t.yaml:3: invalid YAML: illegal map value (column 12)");
}

// ---- TLS -----------------------------------------------------------------------------------

TEST(config_tls, a_tls_listener_needs_the_tls_section)
{
    EXPECT_EQ(error_of("server:\n  listen:\n    - port: 25\n    - port: 465\n      tls: implicit\n"),
              "t.yaml:5: tls: required (certificate and private_key) because server.listen[1] uses tls: implicit");
    EXPECT_EQ(error_of("server:\n  listen:\n    - tls: starttls\ntls:\n"),
              "t.yaml:3: tls: required (certificate and private_key) because server.listen[0] uses tls: starttls");
}

TEST(config_tls, files_must_be_readable)
{
    temp_dir dir;
    dir.write("cert.pem", "c");
    const std::string head = "server:\n  listen:\n    - tls: starttls\ntls:\n";
    EXPECT_EQ(error_of(head + "  certificate: cert.pem\n  private_key: key.pem\n", dir.path()),
              "t.yaml:6: tls.private_key: cannot read \"" + (dir.path() / "key.pem").string() +
                  "\": No such file or directory");
    EXPECT_EQ(error_of(head + "  certificate: missing.pem\n  private_key: cert.pem\n", dir.path()),
              "t.yaml:5: tls.certificate: cannot read \"" + (dir.path() / "missing.pem").string() +
                  "\": No such file or directory");
    EXPECT_EQ(error_of(head + "  certificate: .\n  private_key: cert.pem\n", dir.path()),
              "t.yaml:5: tls.certificate: cannot read \"" + dir.path().string() + "/\": not a regular file");
    EXPECT_EQ(error_of(head + "  certificate: cert.pem\n", dir.path()),
              "t.yaml:5: tls.private_key: missing (the tls section needs it)");
}

TEST(config_tls, section_without_tls_listeners_is_checked_then_ignored)
{
    // Files are not looked at when no listener uses TLS.
    const settings s = parse_text("tls:\n  certificate: /nonexistent/c.pem\n  private_key: k.pem\n");
    EXPECT_FALSE(s.tls.has_value());
    EXPECT_EQ(error_of("tls:\n  certificate: [c]\n  private_key: k\n"),
              "t.yaml:2: tls.certificate: expected a string, got a sequence");
    EXPECT_EQ(error_of("tls:\n  private_key: k\n"), "t.yaml:2: tls.certificate: missing (the tls section needs it)");
}

TEST(config_tls, versions_ciphers_and_client_certificates)
{
    temp_dir dir;
    dir.write("c.pem", "c");
    dir.write("k.pem", "k");
    const std::string head =
        "server:\n  listen:\n    - tls: implicit\ntls:\n  certificate: c.pem\n  private_key: k.pem\n";
    const settings defaults = parse_text(head, dir.path());
    ASSERT_TRUE(defaults.tls.has_value());
    EXPECT_EQ(defaults.tls->min_version, tls_version::v1_2);
    EXPECT_TRUE(defaults.tls->ciphers.empty());
    EXPECT_FALSE(defaults.tls->request_client_certificate);
    EXPECT_TRUE(defaults.tls->session_resumption);
    const settings s = parse_text(head + "  min_version: 1.3\n  ciphers: ECDHE-RSA-AES128-GCM-SHA256\n"
                                         "  ciphersuites: TLS_AES_128_GCM_SHA256\n  request_client_certificate: true\n"
                                         "  session_resumption: false\n",
                                  dir.path());
    EXPECT_EQ(s.tls->min_version, tls_version::v1_3);
    EXPECT_EQ(s.tls->ciphers, "ECDHE-RSA-AES128-GCM-SHA256");
    EXPECT_EQ(s.tls->ciphersuites, "TLS_AES_128_GCM_SHA256");
    EXPECT_TRUE(s.tls->request_client_certificate);
    EXPECT_FALSE(s.tls->session_resumption);
    EXPECT_EQ(error_of(head + "  min_version: 1.1\n", dir.path()),
              "t.yaml:7: tls.min_version: expected one of 1.2, 1.3, got \"1.1\"");
    EXPECT_EQ(error_of(head + "  request_client_certificate: maybe\n", dir.path()).substr(0, 45),
              "t.yaml:7: tls.request_client_certificate: exp");
}

// ---- paths ---------------------------------------------------------------------------------

TEST(config_paths, relative_paths_resolve_against_base_dir)
{
    const settings s = parse_text("plugin_path: [plugins, ../lib/x/, /abs/p, ./a/./b]\n"
                                  "plugins:\n  - path: ./p/../q/x.so\n  - path: /opt/y.so\n",
                                  "/base/conf");
    ASSERT_EQ(s.plugin_path.size(), 4u);
    EXPECT_EQ(s.plugin_path[0], "/base/conf/plugins");
    EXPECT_EQ(s.plugin_path[1], "/base/lib/x");
    EXPECT_EQ(s.plugin_path[2], "/abs/p");
    EXPECT_EQ(s.plugin_path[3], "/base/conf/a/b");
    ASSERT_EQ(s.plugins.size(), 2u);
    EXPECT_EQ(s.plugins[0].path, "/base/conf/q/x.so");
    EXPECT_EQ(s.plugins[1].path, "/opt/y.so");
}

// ---- plugins -------------------------------------------------------------------------------

TEST(config_plugins, name_or_path)
{
    EXPECT_EQ(error_of("plugins:\n  - name: sink\n    path: /x.so\n"),
              "t.yaml:3: plugins[0]: give either name or path, not both");
    EXPECT_EQ(error_of("plugins:\n  - name: sink\n  - timeout: 3\n"), "t.yaml:3: plugins[1]: needs a name or a path");
    EXPECT_EQ(error_of("plugins:\n  - name: Sink\n"),
              R"(t.yaml:2: plugins[0].name: expected a plugin name of [a-z0-9_.-], got "Sink")");
    EXPECT_EQ(error_of("plugins:\n  - name: ../evil\n"),
              R"(t.yaml:2: plugins[0].name: expected a plugin name of [a-z0-9_.-], got "../evil")");
    EXPECT_EQ(error_of("plugins:\n  - name:\n"),
              "t.yaml:2: plugins[0].name: expected a plugin name of [a-z0-9_.-], got null");
    const settings s = parse_text("plugins:\n  - name: my_plugin-2.x\n");
    EXPECT_EQ(s.plugins.at(0).name, "my_plugin-2.x");
}

TEST(config_plugins, config_tree_keeps_raw_text_order_and_nulls)
{
    const settings s = parse_text(R"(plugins:
  - name: x
    config:
      zeta: 0x10
      alpha: yes
      quoted: "null"
      tilde: ~
      empty:
      list: [1, two, {k: v}, [], ~]
      nested:
        b: 2
        a: 1
      text: |
        line1
        line2
)");
    const node& c = s.plugins.at(0).config;
    ASSERT_EQ(c.type, node::kind::map);
    const std::vector<std::string> keys{"zeta", "alpha", "quoted", "tilde", "empty", "list", "nested", "text"};
    EXPECT_EQ(c.keys, keys);
    EXPECT_EQ(c.items.size(), keys.size());
    EXPECT_EQ(c.get("zeta")->scalar, "0x10");
    EXPECT_EQ(c.get("alpha")->scalar, "yes");
    EXPECT_EQ(c.get("quoted")->type, node::kind::scalar);
    EXPECT_EQ(c.get("quoted")->scalar, "null");
    EXPECT_EQ(c.get("tilde")->type, node::kind::null);
    EXPECT_EQ(c.get("empty")->type, node::kind::null);
    const node& list = *c.get("list");
    ASSERT_EQ(list.type, node::kind::sequence);
    ASSERT_EQ(list.items.size(), 5u);
    EXPECT_EQ(list.items[0].scalar, "1");
    EXPECT_EQ(list.items[1].scalar, "two");
    EXPECT_EQ(list.items[2].get("k")->scalar, "v");
    EXPECT_EQ(list.items[3].type, node::kind::sequence);
    EXPECT_TRUE(list.items[3].items.empty());
    EXPECT_EQ(list.items[4].type, node::kind::null);
    const node& nested = *c.get("nested");
    EXPECT_EQ(nested.keys, (std::vector<std::string>{"b", "a"}));
    EXPECT_EQ(nested.get("a")->scalar, "1");
    EXPECT_EQ(c.get("text")->scalar, "line1\nline2\n");
    EXPECT_EQ(error_of("plugins:\n  - name: x\n    config:\n      ? [k]\n      : v\n"),
              "t.yaml:4: plugins[0].config: expected a plain key, got a sequence");
}

TEST(config_plugins, config_may_be_any_yaml)
{
    const settings s = parse_text("plugins:\n  - name: a\n    config: 5\n  - name: b\n    config: [x]\n"
                                  "  - name: c\n    config:\n");
    EXPECT_EQ(s.plugins.at(0).config.type, node::kind::scalar);
    EXPECT_EQ(s.plugins.at(0).config.scalar, "5");
    EXPECT_EQ(s.plugins.at(1).config.type, node::kind::sequence);
    EXPECT_EQ(s.plugins.at(2).config.type, node::kind::null);
}

TEST(config_plugins, aliases_are_expanded_and_bounded)
{
    const settings s = parse_text("plugins:\n  - name: a\n    config: {x: &v [1, 2], y: *v}\n");
    EXPECT_EQ(s.plugins.at(0).config.get("y")->items.at(1).scalar, "2");
    // yaml-cpp builds a cycle for an alias inside its own anchor: refused, not a stack overflow.
    EXPECT_EQ(
        error_of("plugins:\n  - name: a\n    config: &a [1, *a]\n").rfind("t.yaml:3: plugins[0].config[1][1][1]", 0),
        0u);
    EXPECT_NE(error_of("plugins:\n  - name: a\n    config: &a [1, *a]\n").find(": nested deeper than 64 levels"),
              std::string::npos);
    // "Billion laughs": every level doubles the expansion.
    std::string laughs = "plugins:\n  - name: a\n    config:\n      l0: &l0 [x, x]\n";
    for (int i = 1; i < 20; ++i)
        laughs += "      l" + std::to_string(i) + ": &l" + std::to_string(i) + " [*l" + std::to_string(i - 1) + ", *l" +
                  std::to_string(i - 1) + "]\n";
    EXPECT_NE(error_of(laughs).find(": more than 100000 values (alias expansion?)"), std::string::npos);
}

// ---- command_call_limit --------------------------------------------------------------------

TEST(config_call_limits, null_int_and_map)
{
    EXPECT_FALSE(parse_text("server:\n  command_call_limit: null\n").server.command_call_limit.enabled);

    const call_limits one = parse_text("server:\n  command_call_limit: 5\n").server.command_call_limit;
    EXPECT_TRUE(one.enabled);
    EXPECT_EQ(one.default_limit, 5u);
    EXPECT_TRUE(one.per_verb.empty());

    const call_limits map =
        parse_text("server:\n  command_call_limit: {noop: 5, Help: 3, \"*\": 7}\n").server.command_call_limit;
    EXPECT_TRUE(map.enabled);
    EXPECT_EQ(map.default_limit, 7u);
    EXPECT_EQ(map.per_verb, (std::map<std::string, std::uint32_t>{{"HELP", 3}, {"NOOP", 5}}));

    const call_limits no_star = parse_text("server:\n  command_call_limit:\n    NOOP: 2\n").server.command_call_limit;
    EXPECT_TRUE(no_star.enabled);
    EXPECT_EQ(no_star.default_limit, 20u);  // aiosmtpd CALL_LIMIT_DEFAULT
    EXPECT_EQ(no_star.per_verb.at("NOOP"), 2u);

    const call_limits empty = parse_text("server:\n  command_call_limit: {}\n").server.command_call_limit;
    EXPECT_TRUE(empty.enabled);
    EXPECT_EQ(empty.default_limit, 20u);
}

TEST(config_call_limits, errors)
{
    EXPECT_EQ(error_of("server:\n  command_call_limit: 0\n"),
              R"(t.yaml:2: server.command_call_limit: expected an integer >= 1, got "0")");
    EXPECT_EQ(error_of("server:\n  command_call_limit:\n    NOOP: 0\n"),
              R"(t.yaml:3: server.command_call_limit.NOOP: expected an integer >= 1, got "0")");
    EXPECT_EQ(error_of("server:\n  command_call_limit:\n    \"*\": lots\n"),
              R"(t.yaml:3: server.command_call_limit.*: expected an integer >= 1, got "lots")");
    EXPECT_EQ(error_of("server:\n  command_call_limit:\n    NOOP: 1\n    noop: 2\n"),
              "t.yaml:4: server.command_call_limit.noop: duplicate key (verbs are case-insensitive)");
    EXPECT_EQ(error_of("server:\n  command_call_limit:\n    no op: 1\n"),
              R"(t.yaml:3: server.command_call_limit.no op: expected a command verb or "*" as key)");
    EXPECT_EQ(error_of("server:\n  command_call_limit: [NOOP]\n"),
              "t.yaml:2: server.command_call_limit: expected null, an integer or a mapping of verbs to "
              "integers, got a sequence");
}

// ---- load_file -----------------------------------------------------------------------------

TEST(config_load_file, reads_and_resolves_against_its_folder)
{
    temp_dir dir;
    const fs::path file = dir.write("etc/asiosmtpd.yaml", "plugin_path: [plugins]\nplugins:\n  - path: x.so\n");
    const settings s = load_file(file);
    EXPECT_EQ(s.file, file);
    EXPECT_EQ(s.base_dir, dir.path() / "etc");
    EXPECT_EQ(s.plugin_path.at(0), dir.path() / "etc/plugins");
    EXPECT_EQ(s.plugins.at(0).path, dir.path() / "etc/x.so");
}

TEST(config_load_file, errors_name_the_file)
{
    temp_dir dir;
    const fs::path file = dir.write("bad.yaml", "server:\n  listen:\n    - port: notaport\n");
    try {
        load_file(file);
        ADD_FAILURE() << "no config_error";
    } catch (const config_error& e) {
        EXPECT_EQ(std::string(e.what()),
                  file.string() + R"(:3: server.listen[0].port: expected an integer 0..65535, got "notaport")");
    }
}

TEST(config_load_file, unreadable_files)
{
    temp_dir dir;
    const fs::path missing = dir.path() / "nope.yaml";
    try {
        load_file(missing);
        ADD_FAILURE() << "no config_error";
    } catch (const config_error& e) {
        EXPECT_EQ(std::string(e.what()), missing.string() + ": cannot read: No such file or directory");
    }
    try {
        load_file(dir.path());
        ADD_FAILURE() << "no config_error";
    } catch (const config_error& e) {
        EXPECT_EQ(std::string(e.what()), dir.path().string() + ": cannot read: Is a directory");
    }
}

// ---- server.user / server.group / server.allow_root (issue 9) --------------------------------

// The user database entry and primary group name the tests expect for `nobody`; nullopt (the
// test is skipped) on a system without it.
struct account_ids {
    std::string user;
    std::uint32_t uid = 0;
    std::string group;
    std::uint32_t gid = 0;
};

std::optional<account_ids> nobody()
{
    const passwd* pw = ::getpwnam("nobody");
    if (pw == nullptr) return std::nullopt;
    account_ids a{pw->pw_name, pw->pw_uid, std::to_string(pw->pw_gid), pw->pw_gid};
    if (const group* gr = ::getgrgid(pw->pw_gid)) a.group = gr->gr_name;
    return a;
}

TEST(config_privileges, defaults_no_user_and_root_allowed)
{
    const settings s = parse_text("server: {hostname: x}\n");
    EXPECT_FALSE(s.server.user.has_value());
    EXPECT_TRUE(s.server.allow_root);
    EXPECT_TRUE(s.server.allow_root_at.empty());
    // The embedded default keeps running as it always did (as root: with a warning).
    const settings d = load_default();
    EXPECT_FALSE(d.server.user.has_value());
    EXPECT_TRUE(d.server.allow_root);
    // null is as if absent.
    EXPECT_FALSE(parse_text("server:\n  user: null\n  group: null\n").server.user.has_value());
}

TEST(config_privileges, user_by_name_gets_its_primary_group)
{
    const auto n = nobody();
    if (!n) GTEST_SKIP() << "no user nobody on this system";
    const settings s = parse_text("server:\n  hostname: x\n  user: nobody\n");
    ASSERT_TRUE(s.server.user.has_value());
    const run_as& r = *s.server.user;
    EXPECT_EQ(r.user, n->user);
    EXPECT_EQ(r.uid, n->uid);
    EXPECT_EQ(r.gid, n->gid);
    EXPECT_EQ(r.group, n->group);
    EXPECT_FALSE(r.group_given);
    EXPECT_EQ(r.user_at, "t.yaml:3");
    EXPECT_TRUE(r.group_at.empty());
}

TEST(config_privileges, user_and_group_by_name_or_id)
{
    const auto n = nobody();
    if (!n) GTEST_SKIP() << "no user nobody on this system";
    const settings by_id =
        parse_text("server:\n  user: " + std::to_string(n->uid) + "\n  group: " + std::to_string(n->gid) + "\n");
    ASSERT_TRUE(by_id.server.user.has_value());
    EXPECT_EQ(by_id.server.user->user, n->user);  // the name from the database
    EXPECT_EQ(by_id.server.user->uid, n->uid);
    EXPECT_EQ(by_id.server.user->gid, n->gid);
    EXPECT_TRUE(by_id.server.user->group_given);
    EXPECT_EQ(by_id.server.user->group_at, "t.yaml:3");
    if (n->group != std::to_string(n->gid)) {
        const settings by_name = parse_text("server:\n  user: nobody\n  group: \"" + n->group + "\"\n");
        EXPECT_EQ(by_name.server.user->group, n->group);
        EXPECT_EQ(by_name.server.user->gid, n->gid);
    }
    // Any existing group, not only the user's own.
    const group* root_group = ::getgrgid(0);
    if (root_group != nullptr) {
        const settings g0 = parse_text("server:\n  user: nobody\n  group: " + std::string(root_group->gr_name) + "\n");
        EXPECT_EQ(g0.server.user->gid, 0u);
        EXPECT_EQ(g0.server.user->group, root_group->gr_name);
    }
}

TEST(config_privileges, allow_root)
{
    const settings off = parse_text("server:\n  hostname: x\n  allow_root: false\n");
    EXPECT_FALSE(off.server.allow_root);
    EXPECT_EQ(off.server.allow_root_at, "t.yaml:3");
    const settings on = parse_text("server:\n  allow_root: yes\n");
    EXPECT_TRUE(on.server.allow_root);
    EXPECT_EQ(error_of("server:\n  allow_root: maybe\n"),
              R"(t.yaml:2: server.allow_root: expected true or false, got "maybe")");
}

TEST(config_privileges, errors_name_the_line_and_key)
{
    EXPECT_EQ(error_of("server:\n  hostname: x\n  user: asiosmtpd-no-such-user\n"),
              R"(t.yaml:3: server.user: unknown user "asiosmtpd-no-such-user" (not in the user database))");
    EXPECT_EQ(error_of("server:\n  user: 4000000001\n"),
              R"(t.yaml:2: server.user: unknown user "4000000001" (not in the user database))");
    EXPECT_EQ(
        error_of("server:\n  user: root\n"),
        R"(t.yaml:2: server.user: "root" is root (uid 0): name an unprivileged user, or leave server.user unset)");
    EXPECT_EQ(error_of("server:\n  user: 0\n"),
              R"(t.yaml:2: server.user: "0" is root (uid 0): name an unprivileged user, or leave server.user unset)");
    EXPECT_EQ(error_of("server:\n  user: [nobody]\n"), "t.yaml:2: server.user: expected a string, got a sequence");
    EXPECT_EQ(error_of("server:\n  user: \"\"\n"),
              R"(t.yaml:2: server.user: expected a user name or id, got the string "")");
    EXPECT_EQ(error_of("server:\n  group: nogroup\n"),
              "t.yaml:2: server.group: set without server.user (the group is used when switching to that user)");
    if (nobody()) {
        EXPECT_EQ(error_of("server:\n  user: nobody\n  group: asiosmtpd-no-such-group\n"),
                  R"(t.yaml:3: server.group: unknown group "asiosmtpd-no-such-group" (not in the group database))");
        EXPECT_EQ(error_of("server:\n  user: nobody\n  group: {a: 1}\n"),
                  "t.yaml:3: server.group: expected a string, got a mapping");
    }
    EXPECT_EQ(error_of("server:\n  users: nobody\n"), "t.yaml:2: server.users: unknown key (did you mean 'user'?)");
}

TEST(config_keys, plugin_cpu_limit)
{
    const settings s = parse_text("plugins:\n  - name: sink\n    isolation: process\n    cpu_limit: 0.25\n");
    ASSERT_EQ(s.plugins.size(), 1u);
    EXPECT_DOUBLE_EQ(s.plugins[0].cpu_limit, 0.25);
    EXPECT_FALSE(s.plugins[0].user.has_value());
    EXPECT_DOUBLE_EQ(parse_text("plugins:\n  - name: sink\n").plugins[0].cpu_limit, 0);
    EXPECT_EQ(error_of("plugins:\n  - name: sink\n    cpu_limit: 1\n"),
              "t.yaml:3: plugins[0].cpu_limit: needs isolation: process (a plugin in the server's own process has "
              "no limit of its own)");
    EXPECT_EQ(error_of("plugins:\n  - name: sink\n    isolation: process\n    cpu_limit: 0.0001\n"),
              R"(t.yaml:4: plugins[0].cpu_limit: expected at least 0.001 seconds, got "0.0001")");
}

TEST(config_keys, plugin_user)
{
    EXPECT_EQ(error_of("plugins:\n  - name: sink\n    user: nobody\n"),
              "t.yaml:3: plugins[0].user: needs isolation: process (a plugin in the server's own process runs as "
              "the server)");
    EXPECT_EQ(error_of("plugins:\n  - name: sink\n    isolation: process\n    user: \"0\"\n"),
              "t.yaml:4: plugins[0].user: \"0\" is root (uid 0): name an unprivileged user, or leave "
              "plugins[].user unset");
    EXPECT_EQ(error_of("plugins:\n  - name: sink\n    isolation: process\n    user: no-such-user-q\n"),
              "t.yaml:4: plugins[0].user: unknown user \"no-such-user-q\" (not in the user database)");
}

}  // namespace
