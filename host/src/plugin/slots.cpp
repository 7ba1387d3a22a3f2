// SPDX-License-Identifier: Apache-2.0
// The plugins' data slots (slots.hpp).
#include "plugin/slots.hpp"

#include <asiosmtpd/plugin.h>

namespace asiosmtpd::plugin {

slot* slots::find(const instance* owner, int32_t scope) noexcept
{
    for (auto& e : entries_)
        if (e.owner == owner && e.scope == scope) return &e.value;
    return nullptr;
}

void slots::set(const instance* owner, int32_t scope, slot s)
{
    if (slot* old = find(owner, scope)) {
        const slot prev = *old;
        *old = s;
        if (prev.dtor != nullptr && prev.data != nullptr && prev.data != s.data) prev.dtor(prev.data);
        return;
    }
    entries_.push_back({owner, scope, s});
}

void slots::clear_transaction() noexcept
{
    for (auto it = entries_.begin(); it != entries_.end();) {
        if (it->scope == ASIOSMTPD_SCOPE_TXN) {
            const slot s = it->value;
            it = entries_.erase(it);
            if (s.dtor != nullptr && s.data != nullptr) s.dtor(s.data);
        } else {
            ++it;
        }
    }
}

void slots::clear_all() noexcept
{
    while (!entries_.empty()) {
        const slot s = entries_.back().value;
        entries_.pop_back();
        if (s.dtor != nullptr && s.data != nullptr) s.dtor(s.data);
    }
}

}  // namespace asiosmtpd::plugin
