// SPDX-License-Identifier: Apache-2.0
// slots: the plugins' private data per session and per transaction (plugin.h slot_set /
// slot_get), with the destructors the plugins gave.
#pragma once

#include <cstdint>
#include <vector>

struct asiosmtpd_ctx;

namespace asiosmtpd::plugin {

using instance = ::asiosmtpd_ctx;

/// One plugin's private data for one scope.
struct slot {
    void* data = nullptr;
    void (*dtor)(void*) = nullptr;
};

/// The slots of one session. Transaction slots are freed when the engine's envelope changes.
class slots {
public:
    slots() = default;
    slots(const slots&) = delete;
    slots& operator=(const slots&) = delete;
    ~slots() { clear_all(); }
    slot* find(const instance* owner, std::int32_t scope) noexcept;
    void set(const instance* owner, std::int32_t scope, slot s);
    void clear_transaction() noexcept;
    void clear_all() noexcept;

private:
    struct entry {
        const instance* owner;
        std::int32_t scope;
        slot value;
    };
    std::vector<entry> entries_;
};

}  // namespace asiosmtpd::plugin
