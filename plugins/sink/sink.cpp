// SPDX-License-Identifier: Apache-2.0
// sink: accepts every message and discards it (aiosmtpd's Sink handler).
// The DATA hook ACCEPTs without a reply, so the host answers its default "250 OK" and no
// later plugin sees the message. It takes the message in chunks (ABI 1.2) and drops them, so
// the host never holds a whole message for it. Takes no configuration.
#include <asiosmtpd/plugin.hpp>

#include <stdexcept>

namespace {

namespace sdk = asiosmtpd::sdk;

class sink {
public:
    explicit sink(sdk::registrar& reg)
    {
        // aiosmtpd: "Sink handler does not accept arguments".
        if (!reg.config().empty()) throw std::invalid_argument("sink takes no configuration");
        reg.on<&sink::on_chunk>(sdk::hook::data_chunk);
        reg.on<&sink::on_data>(sdk::hook::data);
    }

    sdk::verdict on_chunk(sdk::call&) { return sdk::verdict::continue_; }
    sdk::verdict on_data(sdk::call&) { return sdk::verdict::accept; }
};

}  // namespace

ASIOSMTPD_PLUGIN(sink, "sink", "1.0.0", "accepts and discards every message", ASIOSMTPD_PF_THREAD_SAFE)
