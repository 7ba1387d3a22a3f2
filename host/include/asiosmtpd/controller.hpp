// SPDX-License-Identifier: Apache-2.0
// asiosmtpd::controller: run a whole server (config, plugins, listeners) on background
// threads inside another program, as aiosmtpd's Controller does; for tests and tools.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

namespace asiosmtpd {

class controller {
public:
    /// From YAML text (docs/configuration.md); relative paths resolve against `base_dir`.
    static controller from_yaml(std::string_view yaml,
                                const std::filesystem::path& base_dir = std::filesystem::current_path());
    /// From a config file.
    static controller from_file(const std::filesystem::path& file);

    controller(controller&&) noexcept;
    controller& operator=(controller&&) noexcept;
    ~controller();  ///< stop() if still running

    /// Load the plugins, bind the listeners and serve on background threads. Throws
    /// std::runtime_error with a one-line reason (config, plugin, bind).
    void start();
    /// Graceful stop (shutdown_grace applies); waits for the threads. Idempotent.
    void stop();

    /// The bound port of listener `index` (useful with port 0). 0 before start().
    [[nodiscard]] std::uint16_t port(std::size_t index = 0) const;
    /// The bound address of listener `index`.
    [[nodiscard]] std::string address(std::size_t index = 0) const;

private:
    struct impl;
    explicit controller(std::unique_ptr<impl> p);
    std::unique_ptr<impl> impl_;
};

}  // namespace asiosmtpd
