// SPDX-License-Identifier: Apache-2.0
// authfile: AUTH PLAIN/LOGIN against a file of "user:hash" lines (crypt(3): yescrypt, SHA-512,
// bcrypt), verified with libcrypt's crypt_r on the plugin's own worker threads, so that the
// AUTH_CHECK hook never blocks the server: it suspends and a worker completes it.
#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/worker_pool.hpp>

#include <crypt.h>

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

namespace {

namespace sdk = asiosmtpd::sdk;

// libxcrypt's crypt_rn with a zeroed crypt_data of our own: thread-safe. (crypt_rn rather than
// crypt_r: sanitizer runtimes intercept crypt_r and cannot resolve it in a library loaded after
// start-up, and crypt_rn says "failed" with NULL instead of a "*0" string.)
std::string hash_with(const std::string& password, const std::string& setting)
{
    auto data = std::make_unique<crypt_data>();
    std::memset(data.get(), 0, sizeof *data);
    const char* out = crypt_rn(password.c_str(), setting.c_str(), data.get(), static_cast<int>(sizeof *data));
    std::string result = (out == nullptr || out[0] == '*') ? std::string() : std::string(out);
    explicit_bzero(data.get(), sizeof *data);
    return result;
}

bool same(const std::string& a, const std::string& b) noexcept
{
    // Constant time in the content (the lengths of two crypt strings of one scheme match).
    if (a.size() != b.size()) return false;
    unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    return diff == 0;
}

void wipe(std::string& s) noexcept
{
    if (!s.empty()) explicit_bzero(s.data(), s.size());
    s.clear();
}

class authfile {
public:
    explicit authfile(sdk::registrar& reg) : log_(reg.logger())
    {
        const sdk::config cfg = reg.config();
        cfg.expect_map();
        cfg.check_keys({"users_file", "workers"});
        std::string file = cfg.require("users_file").as_string();
        if (!file.empty() && file.front() != '/' && !reg.config_dir().empty())
            file = std::string(reg.config_dir()) + "/" + file;
        const auto w = cfg.get("workers");
        const std::int64_t workers = w ? w->as_int(1, 16) : 2;
        load(file);
        pool_.emplace(static_cast<std::size_t>(workers), [this](job& j) { check(j); });
        reg.on<&authfile::on_auth_check>(sdk::hook::auth_check);
    }

    authfile(const authfile&) = delete;
    authfile& operator=(const authfile&) = delete;

    ~authfile()
    {
        pool_.reset();
        // Jobs still queued complete through ~pending with 451 (the session is gone anyway).
    }

    sdk::verdict on_auth_check(sdk::call& c, const sdk::auth_args& a)
    {
        pool_->post(job{c.suspend(), std::string(a.login), std::string(a.password), std::string(a.authzid)});
        return sdk::verdict::pending;
    }

private:
    struct job {
        sdk::pending pending;
        std::string login;
        std::string password;
        std::string authzid;
    };

    void load(const std::string& file)
    {
        std::ifstream in(file);
        if (!in) throw std::invalid_argument("users_file: cannot read \"" + file + "\"");
        std::string line;
        std::size_t number = 0;
        while (std::getline(in, line)) {
            ++number;
            if (!line.empty() && line.back() == '\r') line.pop_back();
            const auto first = line.find_first_not_of(" \t");
            if (first == std::string::npos || line[first] == '#') continue;
            const auto colon = line.find(':');
            const std::string where = file + ":" + std::to_string(number) + ": ";
            if (colon == std::string::npos || colon == 0) throw std::invalid_argument(where + "expected user:hash");
            std::string user = line.substr(0, colon);
            std::string hash = line.substr(colon + 1);
            // A complete hash hashes to a string of its own length; a bare setting ("$6$salt")
            // would be accepted by crypt_r but could never match.
            std::string probe = hash_with("probe", hash);
            if (hash.front() != '$' || probe.empty() || probe.size() != hash.size())
                throw std::invalid_argument(where + "not a complete crypt(3) hash libcrypt can verify, for user " +
                                            user);
            if (!users_.emplace(std::move(user), hash).second) throw std::invalid_argument(where + "duplicate user");
            if (decoy_.empty()) decoy_ = hash;  // unknown users are hashed against this
        }
        if (users_.empty()) throw std::invalid_argument("users_file: no users in \"" + file + "\"");
        log_.info("loaded " + std::to_string(users_.size()) + " user(s) from " + file);
    }

    void check(job& j)
    {
        const auto it = users_.find(j.login);
        const std::string& stored = it == users_.end() ? decoy_ : it->second;
        std::string computed = hash_with(j.password, stored);
        const bool ok = it != users_.end() && !computed.empty() && same(computed, stored) &&
                        (j.authzid.empty() || j.authzid == j.login);
        wipe(j.password);
        wipe(computed);
        // The host answers 235 or 535 (docs/behaviour.md); no reply text of our own.
        j.pending.complete(ok ? sdk::verdict::accept : sdk::verdict::reject);
    }

    sdk::logger log_;
    std::map<std::string, std::string> users_;  // read-only after the constructor
    std::string decoy_;
    std::optional<sdk::worker_pool<job>> pool_;  // last: its workers read users_ and decoy_
};

}  // namespace

ASIOSMTPD_PLUGIN(authfile, "authfile", "1.0.0", "AUTH PLAIN/LOGIN against a file of crypt(3) hashes",
                 ASIOSMTPD_PF_THREAD_SAFE)
