// SPDX-License-Identifier: Apache-2.0
// node: a plugin's `config:` subtree as plain data, handed to plugins through the host API
// (cfg_root, cfg_get, ...). Standard library only: part of the core the test kit runs too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::config {

/// A YAML subtree as plain data (for plugins). Maps keep their keys in file order.
struct node {
    enum class kind { null, scalar, sequence, map };
    kind type = kind::null;
    std::string scalar;                                    // raw text when type == scalar
    std::vector<node> items;                               // sequence items, or map values
    std::vector<std::string> keys;                         // map keys, parallel to items
    std::uint32_t line = 0;                                // 1-based line in the file; 0: unknown
    std::vector<std::uint32_t> key_lines;                  // map keys' lines (may be shorter: unknown)
    const node* get(std::string_view key) const noexcept;  // nullptr if absent or not a map
};

/// Where a node of a tree is, for messages: its path below the root ("" for the root itself,
/// "limits.connections", "servers[1]") and its line (0: unknown). A map or sequence that is a
/// map's value is placed on its key's line (`limits:`), a scalar on its own.
struct node_place {
    std::string path;
    std::uint32_t line = 0;
};

/// The place of `target` in the tree under `root`, or nullopt when it is not a node of it.
std::optional<node_place> locate(const node& root, const node* target);

/// The node at `path` ("limits.connections", "servers[1].host"; "" for the root) under `root`,
/// or nullptr. Keys holding '.' or '[' cannot be named so.
const node* resolve(const node& root, std::string_view path) noexcept;

}  // namespace asiosmtpd::config
