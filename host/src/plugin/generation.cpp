// SPDX-License-Identifier: Apache-2.0
// generation.hpp: instances and their registrations.
#include "plugin/generation.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <string>

asiosmtpd_ctx::~asiosmtpd_ctx()
{
    if (self != nullptr && desc != nullptr) desc->destroy(self);
    if (holds_state) asiosmtpd::plugin::drop_kept_state(this);  // the library is still loaded (lib, below)
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

namespace {

// keep_state(): per (plugin name, key), the data and the instances holding it, each with its
// own release function (its own library's).
struct kept_entry {
    void* data = nullptr;
    std::vector<std::pair<const instance*, void (*)(void*)>> holders;
};

struct kept_states {
    std::mutex lock;
    std::map<std::string, kept_entry, std::less<>> entries;
};

kept_states& kept()
{
    static kept_states* const k = new kept_states;  // never destroyed: instances may outlive statics
    return *k;
}

}  // namespace

void* keep_state(instance* owner, std::string_view key, void* candidate, void (*release)(void*))
{
    const bool good = !key.empty() && key.size() <= 128 && std::all_of(key.begin(), key.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
               c == ':' || c == '-';
    });
    if (owner == nullptr || candidate == nullptr || !good) return nullptr;
    const std::string name =
        std::string(owner->desc != nullptr && owner->desc->name != nullptr ? owner->desc->name : owner->name) + '\0' +
        std::string(key);
    kept_states& k = kept();
    const std::lock_guard guard(k.lock);
    kept_entry& e = k.entries[name];
    if (e.data == nullptr) e.data = candidate;
    const auto it =
        std::find_if(e.holders.begin(), e.holders.end(), [owner](const auto& h) { return h.first == owner; });
    if (it == e.holders.end()) e.holders.emplace_back(owner, release);
    else it->second = release;
    owner->holds_state = true;
    return e.data;
}

void drop_kept_state(const instance* owner) noexcept
{
    std::vector<std::pair<void*, void (*)(void*)>> released;
    {
        kept_states& k = kept();
        const std::lock_guard guard(k.lock);
        for (auto it = k.entries.begin(); it != k.entries.end();) {
            auto& holders = it->second.holders;
            const auto h =
                std::find_if(holders.begin(), holders.end(), [owner](const auto& x) { return x.first == owner; });
            if (h == holders.end()) {
                ++it;
                continue;
            }
            void (*release)(void*) = h->second;
            holders.erase(h);
            if (holders.empty()) {
                if (release != nullptr) released.emplace_back(it->second.data, release);
                it = k.entries.erase(it);
            } else {
                ++it;
            }
        }
    }
    for (const auto& [data, release] : released) release(data);  // outside the lock: plugin code
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
