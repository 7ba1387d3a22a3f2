// SPDX-License-Identifier: Apache-2.0
// What the engine tests share: the test server's names, taking the replies out, a hook's
// verdict, and feeding bytes while answering DATA_CHUNK requests.
#pragma once

#include "proto/engine.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::proto {

/// hostname mx.test, ident "asiosmtpd test"; everything else as the engine's defaults.
inline settings base_settings()
{
    settings s;
    s.hostname = "mx.test";
    s.ident = "asiosmtpd test";
    return s;
}

/// The replies so far, removed from the engine's output.
inline std::string take(engine& e)
{
    std::string out = e.output();
    e.clear_output();
    return out;
}

/// A hook's answer: `v`, with `code` and `text` for a reply of its own.
inline hook_result make(verdict v, std::uint16_t code = 0, std::string text = {})
{
    return hook_result{v, code, std::move(text), {}, {}, {}};
}

/// Feeds `bytes` in steps of `step`, answering every DATA_CHUNK request with `v` and recording
/// its piece; returns at any other hook (the DATA hook) or when everything is fed.
inline std::vector<std::string> feed(engine& e, const std::string& bytes, std::size_t step, verdict v = verdict::none)
{
    std::vector<std::string> pieces;
    std::size_t at = 0;
    for (;;) {
        while (const hook_request* r = e.pending_hook()) {
            if (r->kind != hook_kind::data_chunk) return pieces;
            pieces.emplace_back(r->content);
            e.hook_done(make(v));
        }
        if (at == bytes.size()) return pieces;
        const std::size_t n = std::min(step, bytes.size() - at);
        e.receive(std::string_view(bytes).substr(at, n));
        at += n;
    }
}

}  // namespace asiosmtpd::proto
