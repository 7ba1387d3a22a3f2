// SPDX-License-Identifier: Apache-2.0
// A plugin as it would see an envelope rewritten by another plugin (or handed over by a host
// without the server's address checks), for the test kit: the plugin's own entry, but its
// create() gets a host API whose txn_info/txn_rcpt_at/txn_mail_param_at answer with the
// envelope set here instead of the session's (and whose per-recipient replies index it). The test kit, like the server, refuses control
// characters in MAIL/RCPT, so this is how the plugins' own defence against them is tested.
// Same pattern as abi11_host.hpp (whose `library` it uses).
#ifndef ASIOSMTPD_TESTS_UNIT_PLUGINS_REWRITTEN_ENVELOPE_HOST_HPP
#define ASIOSMTPD_TESTS_UNIT_PLUGINS_REWRITTEN_ENVELOPE_HOST_HPP

#include "abi11_host.hpp"

#include <asiosmtpd/plugin.h>

#include <dlfcn.h>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace asiosmtpd::test::rewritten {

struct state {
    asiosmtpd_entry_fn real_entry = nullptr;
    asiosmtpd_plugin_descriptor desc{};
    asiosmtpd_host_api api{};
    asiosmtpd_status (*real_txn_info)(asiosmtpd_call*, asiosmtpd_txn_info*) = nullptr;
    // What the plugin is shown (once the session has a MAIL, whatever it was).
    std::string mail_from;
    std::vector<std::string> rcpts;
    std::vector<std::string> params;
};
inline state current;  // one plugin at a time: tests run one after another

inline asiosmtpd_str str(const std::string& s) noexcept { return {s.data(), s.size()}; }

inline asiosmtpd_status txn_info(asiosmtpd_call* call, asiosmtpd_txn_info* inout)
{
    const asiosmtpd_status st = current.real_txn_info(call, inout);
    if (st != ASIOSMTPD_OK || inout->mail_from.size == 0) return st;  // no transaction: nothing to rewrite
    inout->mail_from = str(current.mail_from);
    inout->rcpt_count = current.rcpts.size();
    inout->mail_param_count = current.params.size();
    return st;
}

inline asiosmtpd_status at(const std::vector<std::string>& v, std::size_t index, asiosmtpd_str* out)
{
    if (index >= v.size()) return ASIOSMTPD_E_INVALID;
    *out = str(v[index]);
    return ASIOSMTPD_OK;
}

inline asiosmtpd_status txn_rcpt_at(asiosmtpd_call*, std::size_t index, asiosmtpd_str* out)
{
    return at(current.rcpts, index, out);
}

inline asiosmtpd_status txn_mail_param_at(asiosmtpd_call*, std::size_t index, asiosmtpd_str* out)
{
    return at(current.params, index, out);
}

// Per-recipient replies (LMTP) index the recipients shown here, which the session does not
// have: checked against them and dropped (the test kit's sessions are SMTP, where the one DATA
// reply is the verdict's anyway).
inline asiosmtpd_status set_rcpt_reply(asiosmtpd_call*, std::size_t index, uint16_t code, asiosmtpd_str)
{
    return index < current.rcpts.size() && code >= 200 && code <= 599 ? ASIOSMTPD_OK : ASIOSMTPD_E_INVALID;
}

inline asiosmtpd_status set_rcpt_reply_pending(asiosmtpd_token, std::size_t index, uint16_t code, asiosmtpd_str text)
{
    return set_rcpt_reply(nullptr, index, code, text);
}

inline asiosmtpd_status create(const asiosmtpd_host_api* api, asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg, void** out,
                               asiosmtpd_errbuf* err)
{
    current.api = *api;
    current.real_txn_info = api->txn_info;
    current.api.txn_info = &txn_info;
    current.api.txn_rcpt_at = &txn_rcpt_at;
    current.api.txn_mail_param_at = &txn_mail_param_at;
    current.api.set_rcpt_reply = &set_rcpt_reply;
    current.api.set_rcpt_reply_pending = &set_rcpt_reply_pending;
    return current.real_entry()->create(&current.api, ctx, reg, out, err);
}

/// The entry to give tk::host::add, after load().
inline const asiosmtpd_plugin_descriptor* entry()
{
    current.desc = *current.real_entry();
    current.desc.create = &create;
    return &current.desc;
}

/// Takes the plugin entry of `lib` and the envelope to show it; false if `lib` has no entry.
inline bool load(const library& lib, std::string mail_from, std::vector<std::string> rcpts,
                 std::vector<std::string> params = {})
{
    current = state{};
    current.real_entry = reinterpret_cast<asiosmtpd_entry_fn>(::dlsym(lib.handle, "asiosmtpd_plugin_entry_v1"));
    current.mail_from = std::move(mail_from);
    current.rcpts = std::move(rcpts);
    current.params = std::move(params);
    return current.real_entry != nullptr;
}

}  // namespace asiosmtpd::test::rewritten

#endif  // ASIOSMTPD_TESTS_UNIT_PLUGINS_REWRITTEN_ENVELOPE_HOST_HPP
