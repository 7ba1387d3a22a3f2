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

}  // namespace asiosmtpd::config
