// SPDX-License-Identifier: Apache-2.0
#include "config/node.hpp"

#include <algorithm>

namespace asiosmtpd::config {

const node* node::get(std::string_view key) const noexcept
{
    if (type != kind::map) return nullptr;
    const std::size_t n = std::min(keys.size(), items.size());
    for (std::size_t i = 0; i < n; ++i)
        if (keys[i] == key) return &items[i];
    return nullptr;
}

namespace {

// Depth-first search; `place` holds the path and line of `n`. The tree is bounded by the
// config reader (depth and node count), so recursion is fine.
bool find(const node& n, const node* target, node_place& place)
{
    if (&n == target) return true;
    const std::string base = place.path;
    const std::uint32_t base_line = place.line;
    for (std::size_t i = 0; i < n.items.size(); ++i) {
        const node& child = n.items[i];
        if (n.type == node::kind::map) {
            const std::string_view key = i < n.keys.size() ? std::string_view(n.keys[i]) : std::string_view("?");
            place.path = base.empty() ? std::string(key) : base + "." + std::string(key);
            const std::uint32_t key_line = i < n.key_lines.size() ? n.key_lines[i] : 0;
            place.line = child.type == node::kind::scalar && child.line != 0 ? child.line
                         : key_line != 0                                     ? key_line
                                                                             : child.line;
        } else {
            place.path = base + "[" + std::to_string(i) + "]";
            place.line = child.line;
        }
        if (find(child, target, place)) return true;
    }
    place.path = base;
    place.line = base_line;
    return false;
}

}  // namespace

const node* resolve(const node& root, std::string_view path) noexcept
{
    const node* n = &root;
    while (!path.empty() && n != nullptr) {
        if (path.front() == '[') {
            const auto close = path.find(']');
            if (close == std::string_view::npos || close == 1 || n->type != node::kind::sequence) return nullptr;
            std::size_t index = 0;
            for (const char c : path.substr(1, close - 1)) {
                if (c < '0' || c > '9' || index > n->items.size()) return nullptr;
                index = index * 10 + static_cast<std::size_t>(c - '0');
            }
            if (index >= n->items.size()) return nullptr;
            n = &n->items[index];
            path.remove_prefix(close + 1);
            if (!path.empty() && path.front() == '.') path.remove_prefix(1);
            continue;
        }
        const auto end = path.find_first_of(".[");
        n = n->get(path.substr(0, end));
        if (end == std::string_view::npos) break;
        path.remove_prefix(path[end] == '.' ? end + 1 : end);
    }
    return n;
}

std::optional<node_place> locate(const node& root, const node* target)
{
    node_place place{std::string(), root.line};
    if (target == nullptr || !find(root, target, place)) return std::nullopt;
    return place;
}

}  // namespace asiosmtpd::config
