// SPDX-License-Identifier: Apache-2.0
#include "net/handshake_limits.hpp"

#include "net/metrics.hpp"

#include <boost/asio/ip/address.hpp>

#include <utility>

namespace asiosmtpd::net {

handshake_limits::slot& handshake_limits::slot::operator=(slot&& other) noexcept
{
    if (this != &other) {
        release();
        owner_ = std::move(other.owner_);
        key_ = std::move(other.key_);
        other.owner_.reset();
    }
    return *this;
}

void handshake_limits::slot::release() noexcept
{
    if (!owner_) return;
    owner_->give_back(key_);
    owner_.reset();
    key_.clear();
}

void handshake_limits::set_limits(std::uint32_t server, std::uint32_t per_client)
{
    const std::lock_guard guard(lock_);
    max_server_ = server;
    max_per_client_ = per_client;
}

std::string handshake_limits::client_key(std::string_view address)
{
    boost::system::error_code ec;
    auto a = boost::asio::ip::make_address(std::string(address), ec);
    if (ec) return std::string(address);
    if (a.is_v6() && a.to_v6().is_v4_mapped())
        a = boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6());
    if (a.is_v4()) return a.to_string();
    auto bytes = a.to_v6().to_bytes();
    for (std::size_t i = 8; i < bytes.size(); ++i) bytes[i] = 0;
    return boost::asio::ip::address_v6(bytes).to_string() + "/64";
}

handshake_limits::slot handshake_limits::try_acquire(std::string_view address, refusal& why)
{
    slot s;
    std::string key = client_key(address);
    {
        const std::lock_guard guard(lock_);
        why = refusal::none;
        if (max_server_ != 0 && total_ >= max_server_) {
            why = refusal::server;
        } else {
            std::uint32_t& n = per_client_[key];  // refused: n > 0, so no entry is left at 0
            if (max_per_client_ != 0 && n >= max_per_client_) {
                why = refusal::client;
            } else {
                ++n;
                ++total_;
            }
        }
    }
    metrics& m = metrics::get();
    if (why == refusal::server) m.tls_refused_server.fetch_add(1, std::memory_order_relaxed);
    else if (why == refusal::client) m.tls_refused_client.fetch_add(1, std::memory_order_relaxed);
    if (why != refusal::none) return s;
    m.tls_handshaking.fetch_add(1, std::memory_order_relaxed);
    s.owner_ = shared_from_this();
    s.key_ = std::move(key);
    return s;
}

void handshake_limits::give_back(const std::string& key) noexcept
{
    {
        const std::lock_guard guard(lock_);
        if (total_ > 0) --total_;
        if (const auto it = per_client_.find(key); it != per_client_.end() && --it->second == 0) per_client_.erase(it);
    }
    metrics::get().tls_handshaking.fetch_sub(1, std::memory_order_relaxed);
}

std::size_t handshake_limits::in_progress() const
{
    const std::lock_guard guard(lock_);
    return total_;
}

std::size_t handshake_limits::in_progress(std::string_view address) const
{
    const std::string key = client_key(address);
    const std::lock_guard guard(lock_);
    const auto it = per_client_.find(key);
    return it == per_client_.end() ? 0 : it->second;
}

std::uint32_t handshake_limits::limit(refusal which) const
{
    const std::lock_guard guard(lock_);
    return which == refusal::client ? max_per_client_ : max_server_;
}

}  // namespace asiosmtpd::net
