// SPDX-License-Identifier: Apache-2.0
#include <asiosmtpd/controller.hpp>

#include "config/config.hpp"
#include "net/server.hpp"
#include "plugin/loader.hpp"

#include <stdexcept>
#include <thread>

namespace asiosmtpd {

struct controller::impl {
    config::settings settings;
    std::unique_ptr<net::server> server;
    std::thread runner;
};

controller::controller(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
controller::controller(controller&&) noexcept = default;
controller& controller::operator=(controller&&) noexcept = default;

controller::~controller()
{
    if (impl_) stop();
}

controller controller::from_yaml(std::string_view yaml, const std::filesystem::path& base_dir)
{
    auto p = std::make_unique<impl>();
    p->settings = config::parse(yaml, "<controller>", base_dir);
    return controller(std::move(p));
}

controller controller::from_file(const std::filesystem::path& file)
{
    auto p = std::make_unique<impl>();
    p->settings = config::load_file(file);
    return controller(std::move(p));
}

void controller::start()
{
    if (impl_->server) throw std::runtime_error("controller already started");
    auto tls = net::tls_context_for(impl_->settings);
    auto plugins = plugin::load(impl_->settings);
    auto srv = std::make_unique<net::server>(impl_->settings, std::move(plugins), std::move(tls));
    srv->bind();
    impl_->server = std::move(srv);
    impl_->runner = std::thread([s = impl_->server.get()] { s->run(); });
}

void controller::stop()
{
    if (!impl_ || !impl_->server) return;
    impl_->server->stop();
    if (impl_->runner.joinable()) impl_->runner.join();
    impl_->server.reset();
    plugin::drain_retired();
}

std::uint16_t controller::port(std::size_t index) const
{
    if (!impl_->server) return 0;
    const auto eps = impl_->server->endpoints();
    return index < eps.size() ? eps[index].port() : 0;
}

std::string controller::address(std::size_t index) const
{
    if (!impl_->server) return {};
    const auto eps = impl_->server->endpoints();
    return index < eps.size() ? eps[index].address().to_string() : std::string{};
}

}  // namespace asiosmtpd
