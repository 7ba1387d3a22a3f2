// SPDX-License-Identifier: Apache-2.0
// config_fuzz: the YAML configuration loader against arbitrary text.
//
// Input: the whole file. Checked: parse() returns settings or throws config_error, nothing else
// (no yaml-cpp exception, no std::out_of_range, no crash); a config_error message starts with
// the file name, is one line, and the settings returned satisfy the documented invariants.
#include "config/config.hpp"
#include "fuzz_check.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    namespace config = asiosmtpd::config;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        // A base folder that does not exist: relative tls/plugin paths resolve into nowhere.
        const config::settings s = config::parse(text, "fuzz.yaml", "/nonexistent/asiosmtpd-fuzz");
        ASIOSMTPD_FUZZ_CHECK(!s.server.hostname.empty(), "hostname filled in");
        ASIOSMTPD_FUZZ_CHECK(!s.server.listen.empty(), "at least one listener");
        ASIOSMTPD_FUZZ_CHECK(s.server.timeout > 0 && s.server.tls_handshake_timeout > 0, "timeouts > 0");
        ASIOSMTPD_FUZZ_CHECK(s.server.max_connections >= 1, "max_connections >= 1");
        ASIOSMTPD_FUZZ_CHECK(s.server.shutdown_grace >= 0, "shutdown_grace >= 0");
        for (const config::plugin_entry& p : s.plugins) {
            ASIOSMTPD_FUZZ_CHECK(p.name.empty() != p.path.empty(), "a plugin has a name or a path");
            ASIOSMTPD_FUZZ_CHECK(p.path.empty() || p.path.is_absolute(), "plugin paths are absolute");
            ASIOSMTPD_FUZZ_CHECK(p.timeout > 0, "plugin timeout > 0");
        }
        for (const auto& d : s.plugin_path) ASIOSMTPD_FUZZ_CHECK(d.is_absolute(), "plugin_path absolute");
    } catch (const config::config_error& e) {
        const std::string_view what = e.what();
        ASIOSMTPD_FUZZ_CHECK(what.substr(0, 9) == "fuzz.yaml", "the message names the file");
        ASIOSMTPD_FUZZ_CHECK(what.find('\n') == std::string_view::npos, "the message is one line");
    }
    return 0;
}
