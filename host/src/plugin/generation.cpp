// SPDX-License-Identifier: Apache-2.0
// generation.hpp: instances and their registrations.
#include "plugin/generation.hpp"

#include <algorithm>

asiosmtpd_ctx::~asiosmtpd_ctx()
{
    if (self != nullptr && desc != nullptr) desc->destroy(self);
}

namespace asiosmtpd::plugin {

generation::~generation()
{
    // Reverse config order; each instance's destroy() runs before its library may close.
    while (!instances.empty()) instances.pop_back();
}

std::uint32_t generation::hook_mask() const noexcept
{
    std::uint32_t mask = 0;
    for (std::size_t id = 1; id < hooks.size(); ++id)
        if (!hooks[id].empty()) mask |= 1u << id;
    if (!commands.empty()) mask |= proto::hook_bit(proto::hook_kind::command);
    if (!auth_mechanisms.empty()) mask |= proto::hook_bit(proto::hook_kind::auth_mechanism);
    return mask;
}

void add_registrations(proto::settings& e, const generation& g)
{
    for (const auto& c : g.commands) e.commands.push_back({c.verb, c.help, (c.flags & ASIOSMTPD_CMD_NEEDS_HELO) != 0});
    e.ehlo_keywords = g.ehlo_keywords;
    for (const auto& m : g.auth_mechanisms) e.auth_mechanisms.push_back(m.name);
    e.hook_mask = g.hook_mask();
    // Streaming (ABI 1.2): the whole message is kept only for a DATA hook whose plugin takes no
    // DATA_CHUNK; otherwise a session holds one chunk at most.
    const auto& chunked = g.hooks[ASIOSMTPD_HOOK_DATA_CHUNK];
    e.data_whole_message =
        std::any_of(g.hooks[ASIOSMTPD_HOOK_DATA].begin(), g.hooks[ASIOSMTPD_HOOK_DATA].end(), [&](const hook_entry& d) {
            return std::none_of(chunked.begin(), chunked.end(),
                                [&](const hook_entry& c) { return c.owner == d.owner; });
        });
}

std::size_t generation::position(const instance* owner) const noexcept
{
    for (std::size_t i = 0; i < instances.size(); ++i)
        if (instances[i].get() == owner) return i;
    return std::string::npos;
}

std::size_t generation::first_editor() const noexcept
{
    std::size_t first = std::string::npos;
    for (const hook_entry& d : hooks[ASIOSMTPD_HOOK_DATA])
        if (d.owner->editor) first = std::min(first, position(d.owner));
    return first;
}

void generation::forget(const instance* owner)
{
    for (auto& chain : hooks) std::erase_if(chain, [owner](const hook_entry& h) { return h.owner == owner; });
    std::erase_if(commands, [owner](const command_entry& c) { return c.handler.owner == owner; });
    std::erase_if(auth_mechanisms, [owner](const auth_mechanism_entry& m) { return m.handler.owner == owner; });
}

}  // namespace asiosmtpd::plugin
