// SPDX-License-Identifier: Apache-2.0
// ping: the SDK example. Adds the SMTP command PING, answered "259 Pong" (aiosmtpd's
// documented smtp_PING subclass example: smtplib's docmd('PING') returns (259, b'Pong')).
// Any argument is ignored, as in the example; HELO is not required. Takes no configuration.
#include <asiosmtpd/plugin.hpp>

#include <stdexcept>

namespace {

namespace sdk = asiosmtpd::sdk;

class ping {
public:
    explicit ping(sdk::registrar& reg)
    {
        if (!reg.config().empty()) throw std::invalid_argument("ping takes no configuration");
        reg.command<&ping::on_ping>("PING", "PING");
    }

    sdk::verdict on_ping(sdk::call& c, const sdk::command_args&) { return c.accept(259, "Pong"); }
};

}  // namespace

ASIOSMTPD_PLUGIN(ping, "ping", "1.0.0", "the PING command, answered 259 Pong", ASIOSMTPD_PF_THREAD_SAFE)
