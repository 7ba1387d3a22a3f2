// SPDX-License-Identifier: Apache-2.0
// draft: the transaction as the plugins after a message editor see it (ABI 1.3 editing).
//
// An editor's DATA hook records edits (edit_message(), checked by check_edit()) in an
// edit_batch; when its call ends with CONTINUE or ACCEPT the chain applies the batch to the
// draft, and the plugins after it read the draft: its envelope through txn_info() and friends,
// its message as `content` or in pieces (read()). The client's envelope and message (the
// engine's, or the held spool) are never changed: the editor, the plugins before it, the
// client's reply and the mail log see what the client sent.
//
// spool: the message held while editors run, in memory up to a threshold and above it in an
// unlinked file, so that memory per session stays bounded however large the message.
//
// Standard library and POSIX only (part of the core the SDK test kit runs too).
#pragma once

#include "proto/engine.hpp"

#include <asiosmtpd/plugin.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::plugin {

/// Where held messages go (server.spool_threshold, server.spool_directory).
struct spool_settings {
    std::uint64_t threshold = 1024 * 1024;  ///< bytes kept in memory; beyond them, a file
    std::string directory;                  ///< empty: $TMPDIR, else /tmp
};

/// Bytes appended once and read back by range: memory up to the threshold, then an unlinked
/// temporary file (O_TMPFILE where the file system has it).
class spool {
public:
    explicit spool(spool_settings settings) : settings_(std::move(settings)) {}
    ~spool();
    spool(const spool&) = delete;
    spool& operator=(const spool&) = delete;

    /// False, with `error` set, when the file cannot be made or written (disk full...).
    bool append(std::string_view bytes, std::string& error);
    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
    [[nodiscard]] bool on_disk() const noexcept { return fd_ >= 0; }
    /// Append bytes [offset, offset + n) (clamped to the size) to `out`; false on a read error.
    bool read(std::uint64_t offset, std::size_t n, std::string& out, std::string& error) const;

private:
    bool to_disk(std::string& error);
    spool_settings settings_;
    std::string memory_;
    int fd_ = -1;
    std::uint64_t size_ = 0;
};

/// One edit, checked and copied (asiosmtpd_edit).
struct edit_op {
    std::int32_t op = 0;
    std::string name;   ///< header name, or the normalised address
    std::string value;  ///< header value with CRLF line ends (REPLACE_BODY pieces go to the batch's spool)
    std::size_t index = 0;
    std::vector<std::string> params;
};

/// The edits of one call, applied when it ends with CONTINUE or ACCEPT.
struct edit_batch {
    std::vector<edit_op> ops;
    std::unique_ptr<spool> body;  ///< REPLACE_BODY: the new body, when the call gave one
    std::string failed;           ///< a body piece could not be held: the call ends as a plugin error
    [[nodiscard]] bool empty() const noexcept { return ops.empty() && !body && failed.empty(); }
};

/// Check `e` (plugin.h "Message editing"): "" and `out` filled, or why it is refused
/// (E_INVALID). `lmtp`: recipient edits are refused (the caller answers E_STATE for those:
/// see lmtp_refuses()).
[[nodiscard]] std::string check_edit(const asiosmtpd_edit& e, edit_op& out);
/// Recipient edits are not allowed on LMTP listeners (each recipient has its own reply).
[[nodiscard]] bool lmtp_refuses(std::int32_t op) noexcept;
/// Add a checked edit to a batch; REPLACE_BODY pieces go to the batch's spool.
void record_edit(edit_batch& batch, edit_op op, const spool_settings& settings);

/// A recipient as the plugins after an editor see it.
struct draft_rcpt {
    std::string address;
    std::vector<std::string> params;
};

/// The transaction after the edits so far.
class draft {
public:
    /// The client's transaction: its envelope, and its message either in memory (`content`)
    /// or held (`held`, when not null; it outlives the draft).
    draft(const proto::envelope& env, std::string_view content, const spool* held, spool_settings settings);

    /// Apply one call's edits. False, with `error`, when the message could not be read or
    /// held (the call then ends as a plugin error; the draft is as before).
    bool apply(edit_batch batch, std::string& error);

    // The envelope
    [[nodiscard]] const std::string& mail_from() const noexcept { return mail_from_; }
    [[nodiscard]] const std::vector<std::string>& mail_params() const noexcept { return mail_params_; }
    [[nodiscard]] const std::vector<draft_rcpt>& rcpts() const noexcept { return rcpts_; }

    // The message
    [[nodiscard]] bool message_changed() const noexcept { return headers_parsed_ || body_; }
    [[nodiscard]] std::uint64_t size() const noexcept;
    /// Append bytes [offset, offset + n) of the current message to `out`.
    bool read(std::uint64_t offset, std::size_t n, std::string& out, std::string& error) const;
    /// The whole current message in memory (for DATA hooks that take it whole): the client's
    /// content when nothing changed, else a copy made once per change.
    bool whole(std::string_view& out, std::string& error);

private:
    struct field {
        std::string name;
        std::string raw;  ///< "Name: value\r\n", folded lines included
    };
    bool source_read(std::uint64_t offset, std::size_t n, std::string& out, std::string& error) const;
    [[nodiscard]] std::uint64_t source_size() const noexcept;
    bool parse_headers(std::string& error);
    void apply_header(const edit_op& e);
    void rebuild_header_text();
    [[nodiscard]] std::size_t find_field(std::string_view name, std::size_t occurrence) const noexcept;

    std::string_view content_;
    const spool* held_ = nullptr;
    spool_settings settings_;

    std::string mail_from_;
    std::vector<std::string> mail_params_;
    std::vector<draft_rcpt> rcpts_;

    bool headers_parsed_ = false;
    std::vector<field> fields_;
    std::string header_text_;        ///< the fields, joined
    std::uint64_t body_offset_ = 0;  ///< where the client's message goes on after its header block
    std::string separator_;          ///< with a new body: the empty line before it
    std::unique_ptr<spool> body_;    ///< the new body, when an editor replaced it
    std::string whole_;              ///< whole()'s copy
    bool whole_valid_ = false;
};

}  // namespace asiosmtpd::plugin
