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

namespace {

// The error stays one line: control bytes as \xNN, at most `max` bytes.
std::string one_line(std::string_view text, std::size_t max)
{
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    for (const char c : text.substr(0, max)) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) out.append("\\x").append(1, hex[u >> 4]).append(1, hex[u & 15]);
        else out.push_back(c);
    }
    if (text.size() > max) out += "...";
    return out;
}

}  // namespace

create_failure describe_failure(const asiosmtpd_registrar& reg, std::string_view key, std::string_view reason,
                                std::uint32_t root_line)
{
    create_failure f;
    if (reg.report.given && reg.config != nullptr) {
        if (const auto place = config::locate(*reg.config, reg.report.at)) {
            f.config = true;
            f.key = std::string(key) + ".config";
            if (!place->path.empty()) f.key += "." + place->path;
            f.line = place->path.empty() ? root_line : place->line;
            const config::node& at = *reg.report.at;
            if (!reg.report.key.empty()) {
                f.key += "." + reg.report.key;
                // The key's own line when it is there (an unknown key), else the map's (a
                // required key that is missing).
                for (std::size_t i = 0; i < at.keys.size() && i < at.key_lines.size(); ++i)
                    if (at.keys[i] == reg.report.key && at.key_lines[i] != 0) f.line = at.key_lines[i];
            }
            if (f.line == 0) f.line = root_line;
            f.key = one_line(f.key, 300);
            f.problem =
                reg.report.message.empty() ? std::string("refused by the plugin") : one_line(reg.report.message, 1000);
            return f;
        }
    }
    // A plugin that names no node (a C plugin, one built with an older SDK, a hand-written
    // message) often starts its reason with the key path: "limits.connections: must be ...".
    // When that path is a node of its tree (or a missing key of a map there, "path: required"),
    // it is reported as if through cfg_error().
    if (!reg.report.given && reg.config != nullptr && reg.conflict.empty()) {
        const auto colon = reason.find(": ");
        const std::string_view path = colon == std::string_view::npos ? std::string_view() : reason.substr(0, colon);
        const std::string_view problem = colon == std::string_view::npos ? reason : reason.substr(colon + 2);
        asiosmtpd_registrar guess;
        guess.config = reg.config;
        if (path.empty() || path.find(' ') != std::string_view::npos) {
            // not a key path
        } else if (const config::node* at = config::resolve(*reg.config, path)) {
            guess.report = {true, at, {}, std::string(problem)};
        } else if (problem == "required") {
            const auto dot = path.rfind('.');
            const config::node* map =
                config::resolve(*reg.config, dot == std::string_view::npos ? "" : path.substr(0, dot));
            if (map != nullptr && map->type != config::node::kind::sequence)
                guess.report = {true, map, std::string(dot == std::string_view::npos ? path : path.substr(dot + 1)),
                                std::string(problem)};
        }
        if (guess.report.given) return describe_failure(guess, key, reason, root_line);
    }
    if (!reg.conflict.empty()) {
        // The plugin's reason too: it may have gone on after the conflict and failed on
        // something else.
        f.problem = reg.conflict;
        if (!reason.empty()) f.problem += " (the plugin said: " + std::string(reason) + ")";
        return f;
    }
    f.problem = "refused its configuration: " + (reason.empty() ? std::string("no reason given") : std::string(reason));
    return f;
}

}  // namespace asiosmtpd::plugin
