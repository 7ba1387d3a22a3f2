// SPDX-License-Identifier: Apache-2.0
// handshake_limits: how many TLS handshakes may be in progress at once, server-wide
// (server.max_tls_handshakes) and per client address (server.max_tls_handshakes_per_client).
// A handshake that never finishes holds OpenSSL's handshake state until
// tls_handshake_timeout; these caps bound what clients that never finish can hold. Shared by
// every event-loop thread: one mutex, taken once when a handshake starts and once when it ends.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace asiosmtpd::net {

class handshake_limits : public std::enable_shared_from_this<handshake_limits> {
public:
    enum class refusal { none, server, client };

    /// One handshake in progress; given back when destroyed or release()d, on every way out
    /// of a handshake (done, failed, timed out, session gone).
    class slot {
    public:
        slot() = default;
        slot(slot&&) noexcept = default;
        slot& operator=(slot&& other) noexcept;
        slot(const slot&) = delete;
        slot& operator=(const slot&) = delete;
        ~slot() { release(); }
        explicit operator bool() const noexcept { return owner_ != nullptr; }
        void release() noexcept;

    private:
        friend class handshake_limits;
        std::shared_ptr<handshake_limits> owner_;
        std::string key_;
    };

    /// 0: no limit. Takes effect for the handshakes that start from now on (a reload lowering a
    /// limit lets those in progress finish).
    void set_limits(std::uint32_t server, std::uint32_t per_client);
    /// A slot for a handshake with `address` (the client's IP address as text), or an empty
    /// slot and `why` (counted in the metrics). Make the object with std::make_shared.
    slot try_acquire(std::string_view address, refusal& why);
    [[nodiscard]] std::size_t in_progress() const;
    [[nodiscard]] std::size_t in_progress(std::string_view address) const;
    [[nodiscard]] std::uint32_t limit(refusal which) const;

    /// The per-client key of an address: an IPv4 address (IPv4-mapped IPv6 included) counts
    /// alone, an IPv6 address by its /64 (one subscriber's prefix: counting each of its 2^64
    /// addresses alone would not bound anything); text that is not an address, as it is.
    static std::string client_key(std::string_view address);

private:
    void give_back(const std::string& key) noexcept;

    mutable std::mutex lock_;
    std::uint32_t max_server_ = 0;
    std::uint32_t max_per_client_ = 0;
    std::size_t total_ = 0;
    std::unordered_map<std::string, std::uint32_t> per_client_;  ///< only addresses with a handshake
};

}  // namespace asiosmtpd::net
