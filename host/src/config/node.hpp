// SPDX-License-Identifier: Apache-2.0
// node: a plugin's `config:` subtree as plain data, handed to plugins through the host API
// (cfg_root, cfg_get, ...). Standard library only: part of the core the test kit runs too.
#pragma once

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
    const node* get(std::string_view key) const noexcept;  // nullptr if absent or not a map
};

}  // namespace asiosmtpd::config
