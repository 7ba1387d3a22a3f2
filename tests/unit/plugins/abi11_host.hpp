// SPDX-License-Identifier: Apache-2.0
// A plugin as a host older than ABI 1.2 sees it, for the test kit: the plugin's own entry,
// but its create() is given abi_minor 1 and a register_hook that answers E_UNSUPPORTED for
// DATA_CHUNK, as a 1.1 host does for a hook it does not know. Shared by the plugins' tests of
// their whole-message fallback (maildir, mbox).
#ifndef ASIOSMTPD_TESTS_UNIT_PLUGINS_ABI11_HOST_HPP
#define ASIOSMTPD_TESTS_UNIT_PLUGINS_ABI11_HOST_HPP

#include <asiosmtpd/plugin.h>

#include <dlfcn.h>

#include <string>

namespace asiosmtpd::test {

/// dlopen()ed for the length of a test; it must outlive the tk::host that uses its plugin.
struct library {
    explicit library(const std::string& path) : handle(::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) {}
    ~library()
    {
        if (handle) ::dlclose(handle);
    }
    library(const library&) = delete;
    library& operator=(const library&) = delete;
    void* handle;
};

namespace abi11 {

struct state {
    asiosmtpd_entry_fn real_entry = nullptr;
    asiosmtpd_plugin_descriptor desc{};
    asiosmtpd_host_api api{};
    asiosmtpd_status (*real_register)(asiosmtpd_registrar*, asiosmtpd_hook_id, asiosmtpd_hook_fn) = nullptr;
};
inline state current;  // one plugin at a time: tests run one after another

inline asiosmtpd_status register_hook(asiosmtpd_registrar* reg, asiosmtpd_hook_id hook, asiosmtpd_hook_fn fn)
{
    if (hook == ASIOSMTPD_HOOK_DATA_CHUNK)
        return ASIOSMTPD_E_UNSUPPORTED;  // what a 1.1 host answers for a hook it does not know
    return current.real_register(reg, hook, fn);
}

inline asiosmtpd_status create(const asiosmtpd_host_api* api, asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg, void** out,
                               asiosmtpd_errbuf* err)
{
    current.api = *api;
    current.api.abi_minor = 1;
    current.real_register = api->register_hook;
    current.api.register_hook = &register_hook;
    return current.real_entry()->create(&current.api, ctx, reg, out, err);
}

/// The entry to give tk::host::add, after load().
inline const asiosmtpd_plugin_descriptor* entry()
{
    current.desc = *current.real_entry();
    current.desc.create = &create;
    return &current.desc;
}

/// Takes the plugin entry of `lib`; false if it has none.
inline bool load(const library& lib)
{
    current = state{};
    current.real_entry = reinterpret_cast<asiosmtpd_entry_fn>(::dlsym(lib.handle, "asiosmtpd_plugin_entry_v1"));
    return current.real_entry != nullptr;
}

}  // namespace abi11
}  // namespace asiosmtpd::test

#endif  // ASIOSMTPD_TESTS_UNIT_PLUGINS_ABI11_HOST_HPP
