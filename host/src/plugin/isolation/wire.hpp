// SPDX-License-Identifier: Apache-2.0
// wire: the framed protocol between the server and a plugin's child process (isolation:
// process). Every message is one frame: a 4-byte little-endian body length, then the body: one
// type byte and the fields, each a fixed-width little-endian integer or a byte string (4-byte
// length, then the bytes). Standard library only: the server (adapter.cpp) and the helper
// binary (child_main.cpp) both include it.
//
// The child starts with one socketpair, the control channel (its fd 3). The host sends OPEN,
// CREATE and DESTROY there, and ATTACH, each with one more socket's descriptor (SCM_RIGHTS):
// the host's channel for one of its event loops. CALL, CANCEL and END_TXN come on any channel;
// the child answers on the channel a CALL came on: for every CALL exactly one of PENDING (the
// hook suspended) or RESULT with `returned` set (per channel in the order the CALLs came: the
// host's hang check relies on it), later RESULT for a completed suspended call, DONE for a
// notification; LOG lines at any time (a call's on its channel, others on the control channel).
// OPENED carries the child's protocol; a host that sends no ATTACH (protocol 1) gets everything
// on the control channel.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace asiosmtpd::plugin::wire {

/// Frames larger than this are a broken peer (a whole message of the largest data_size_limit
/// fits easily).
inline constexpr std::uint32_t max_frame = 1u << 30;

enum : std::uint8_t {
    // host -> child
    open = 1,     ///< str file
    create = 2,   ///< u8 check_only, str base_dir, tree config, taken names
    call = 3,     ///< u64 id (0: a notification), i32 hook, snapshot, arguments
    cancel = 4,   ///< u64 id: the host gave up on this suspended call (timeout, session gone)
    destroy = 5,  ///< run destroy() and exit
    end_txn = 6,  ///< u64 session: the server freed the session's transaction slots (no answer)
    attach = 7,   ///< (control channel, with one descriptor) serve calls on that socket too
    // child -> host
    opened = 101,   ///< u8 ok, str error | u32 size, u32 abi_major, u32 abi_minor, u32 flags, u8+str name,
                    ///< u8+str version, str description, u8 has create/destroy, u32 protocol
    created = 102,  ///< i32 status, str reason, config report, registrations
    pending = 103,  ///< u64 id: the hook returned PENDING
    result = 104,   ///< u64 id, u8 returned, verdict...
    done = 105,     ///< a notification ran
    log = 106,      ///< i32 level, u8 in_call, u64 session, str txn, str message, u32 n, (str key, str value)*
};

/// The protocol this build speaks (OPENED says the child's): 2 added ATTACH.
inline constexpr std::uint32_t protocol = 2;

/// Hook ids on the wire: the ABI's, plus the host's two own kinds.
inline constexpr std::int32_t hook_command = 100;
inline constexpr std::int32_t hook_auth_mechanism = 101;

/// Appends fields to a frame; finish() writes the length in front.
class writer {
public:
    explicit writer(std::uint8_t type)
    {
        buf_.assign(4, '\0');
        buf_.push_back(static_cast<char>(type));
    }
    /// Room for `n` more bytes (a message piece): one allocation instead of a doubling string.
    writer& reserve(std::size_t n)
    {
        buf_.reserve(buf_.size() + n);
        return *this;
    }
    writer& u8(std::uint8_t v)
    {
        buf_.push_back(static_cast<char>(v));
        return *this;
    }
    writer& u16(std::uint16_t v) { return fixed(v); }
    writer& u32(std::uint32_t v) { return fixed(v); }
    writer& u64(std::uint64_t v) { return fixed(v); }
    writer& i32(std::int32_t v) { return fixed(static_cast<std::uint32_t>(v)); }
    writer& str(std::string_view s)
    {
        u32(static_cast<std::uint32_t>(s.size()));
        buf_.append(s.data() != nullptr ? s.data() : "", s.size());
        return *this;
    }
    /// The frame, ready to send.
    std::string& finish()
    {
        const auto n = static_cast<std::uint32_t>(buf_.size() - 4);
        for (int i = 0; i < 4; ++i) buf_[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
        return buf_;
    }

private:
    template <class T>
    writer& fixed(T v)
    {
        for (std::size_t i = 0; i < sizeof(T); ++i) buf_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
        return *this;
    }
    std::string buf_;
};

/// Reads the fields of one frame body (after the type byte). A read past the end yields zeros
/// and empty strings and clears ok(): the message is then refused as a whole.
class reader {
public:
    explicit reader(std::string_view body) : p_(body.data()), end_(body.data() + body.size()) {}
    std::uint8_t u8() { return fixed<std::uint8_t>(); }
    std::uint16_t u16() { return fixed<std::uint16_t>(); }
    std::uint32_t u32() { return fixed<std::uint32_t>(); }
    std::uint64_t u64() { return fixed<std::uint64_t>(); }
    std::int32_t i32() { return static_cast<std::int32_t>(fixed<std::uint32_t>()); }
    std::string_view str()
    {
        const std::uint32_t n = u32();
        if (!ok_ || static_cast<std::size_t>(end_ - p_) < n) {
            ok_ = false;
            return {};
        }
        const std::string_view s(p_, n);
        p_ += n;
        return s;
    }
    /// A count of items that each take at least `min_bytes`: refused (0, !ok()) when the rest
    /// of the frame cannot hold them, so that a broken peer cannot make us reserve memory.
    std::uint32_t count(std::size_t min_bytes = 1)
    {
        const std::uint32_t n = u32();
        if (!ok_ || static_cast<std::size_t>(end_ - p_) / (min_bytes == 0 ? 1 : min_bytes) < n) {
            ok_ = false;
            return 0;
        }
        return n;
    }
    [[nodiscard]] bool ok() const noexcept { return ok_; }

private:
    template <class T>
    T fixed()
    {
        if (!ok_ || static_cast<std::size_t>(end_ - p_) < sizeof(T)) {
            ok_ = false;
            return 0;
        }
        T v = 0;
        for (std::size_t i = 0; i < sizeof(T); ++i)
            v = static_cast<T>(v | (static_cast<T>(static_cast<unsigned char>(p_[i])) << (8 * i)));
        p_ += sizeof(T);
        return v;
    }
    const char* p_;
    const char* end_;
    bool ok_ = true;
};

/// Collects bytes from a stream and cuts them into frame bodies (type byte first).
class framer {
public:
    void feed(const char* data, std::size_t n) { buf_.append(data, n); }
    /// The next complete body, or false. A length over max_frame sets broken().
    bool next(std::string& body)
    {
        if (buf_.size() - at_ < 4) return compact(false);
        std::uint32_t n = 0;
        for (std::size_t i = 0; i < 4; ++i)
            n |= static_cast<std::uint32_t>(static_cast<unsigned char>(buf_[at_ + i])) << (8 * i);
        if (n == 0 || n > max_frame) {
            broken_ = true;
            return false;
        }
        if (buf_.size() - at_ - 4 < n) return compact(false);
        body.assign(buf_, at_ + 4, n);
        at_ += 4 + n;
        return compact(true);
    }
    [[nodiscard]] bool broken() const noexcept { return broken_; }

private:
    bool compact(bool r)
    {
        if (at_ == buf_.size()) {
            buf_.clear();
            at_ = 0;
        } else if (at_ > 64 * 1024) {
            buf_.erase(0, at_);
            at_ = 0;
        }
        return r;
    }
    std::string buf_;
    std::size_t at_ = 0;
    bool broken_ = false;
};

}  // namespace asiosmtpd::plugin::wire
