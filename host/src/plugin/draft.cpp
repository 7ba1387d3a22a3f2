// SPDX-License-Identifier: Apache-2.0
// The held message and the edited transaction (draft.hpp).
#include "plugin/draft.hpp"

#include "proto/address.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace asiosmtpd::plugin {

namespace {

std::string_view view(asiosmtpd_str s) noexcept
{
    return s.data == nullptr ? std::string_view{} : std::string_view{s.data, s.size};
}

char lower(char c) noexcept { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

bool iequal(std::string_view a, std::string_view b) noexcept
{
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return lower(x) == lower(y); });
}

std::string os_error(std::string_view what, const std::string& where)
{
    return std::string(what) + " " + where + ": " + std::strerror(errno);
}

// RFC 5322 §2.2 field-name: printable ASCII but ':'.
bool valid_header_name(std::string_view n) noexcept
{
    return !n.empty() && n.size() <= 200 &&
           std::all_of(n.begin(), n.end(), [](char c) { return c >= 33 && c <= 126 && c != ':'; });
}

// A field body with its line breaks made CRLF, or why it cannot be one: every line break must be
// followed by SP or HT (a fold; anything else would start a new field or end the header block).
std::string header_value(std::string_view v, std::string& out)
{
    if (v.size() > 65536) return "header value over 65536 bytes";
    out.clear();
    out.reserve(v.size() + 8);
    for (std::size_t i = 0; i < v.size(); ++i) {
        const char c = v[i];
        if (c == '\0') return "NUL in the header value";
        if (c == '\r' || c == '\n') {
            if (c == '\r' && (i + 1 >= v.size() || v[i + 1] != '\n')) return "bare CR in the header value";
            if (c == '\r') ++i;
            if (i + 1 >= v.size() || (v[i + 1] != ' ' && v[i + 1] != '\t'))
                return "a line break in the header value not followed by SP or HT (not a fold)";
            out.append("\r\n");
            continue;
        }
        out.push_back(c);
    }
    return {};
}

// An address as MAIL/RCPT would store it ("<>" only where `null_ok`).
std::string checked_address(std::string_view a, bool null_ok, std::string& out)
{
    if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
    if (a.empty()) {
        if (!null_ok) return "empty recipient address";
        out = "<>";
        return {};
    }
    if (a.size() > 1000) return "address over 1000 bytes";
    if (std::any_of(a.begin(), a.end(), [](char c) { return static_cast<unsigned char>(c) < 32 || c == 127; }))
        return "control character in the address";
    const proto::address_result r = proto::parse_address("<" + std::string(a) + ">", true);
    // A mailbox (RFC 5321 §4.1.2 Forward-path, Reverse-path): local@domain, or Postmaster.
    if (r.state != proto::address_result::status::ok || !r.rest.empty() || r.address.empty() ||
        (r.address.find('@') == std::string::npos && !iequal(r.address, "postmaster")))
        return "malformed address <" + std::string(a) + ">";
    out = r.address;
    return {};
}

// RFC 5321 §4.1.2 esmtp-param: keyword ["=" value].
std::string checked_param(std::string_view p)
{
    const std::size_t eq = p.find('=');
    const std::string_view key = p.substr(0, eq);
    const auto alnum = [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    };
    if (key.empty() || !alnum(key.front()) ||
        !std::all_of(key.begin(), key.end(), [&](char c) { return alnum(c) || c == '-'; }))
        return "malformed ESMTP parameter keyword";
    if (eq == std::string_view::npos) return {};
    const std::string_view value = p.substr(eq + 1);
    if (value.empty() || p.size() > 500 ||
        !std::all_of(value.begin(), value.end(), [](char c) { return c >= 33 && c <= 126 && c != '='; }))
        return "malformed ESMTP parameter value";
    return {};
}

}  // namespace

// ---- spool -----------------------------------------------------------------------------------

spool::~spool()
{
    if (fd_ >= 0) ::close(fd_);
}

bool spool::to_disk(std::string& error)
{
    std::string dir = settings_.directory;
    if (dir.empty()) {
        const char* tmp = std::getenv("TMPDIR");
        dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
    }
#ifdef O_TMPFILE
    fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
    if (fd_ < 0) {
        // No O_TMPFILE on this file system: a named file, unlinked at once.
        std::string name = dir + "/asiosmtpd-spool-XXXXXX";
        fd_ = ::mkostemp(name.data(), O_CLOEXEC);
        if (fd_ < 0) {
            error = os_error("cannot create a spool file in", dir);
            return false;
        }
        ::unlink(name.c_str());
    }
    const std::string held = std::exchange(memory_, {});
    const std::uint64_t had = size_;
    size_ = 0;
    if (!append(held, error)) return false;
    size_ = had;
    return true;
}

bool spool::append(std::string_view bytes, std::string& error)
{
    if (fd_ < 0 && memory_.size() + bytes.size() <= settings_.threshold) {
        memory_.append(bytes);
        size_ += bytes.size();
        return true;
    }
    if (fd_ < 0 && !to_disk(error)) return false;
    while (!bytes.empty()) {
        const ssize_t n = ::pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(size_));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            error = os_error("cannot write the spool file in",
                             settings_.directory.empty() ? std::string("the temporary folder") : settings_.directory);
            return false;
        }
        bytes.remove_prefix(static_cast<std::size_t>(n));
        size_ += static_cast<std::uint64_t>(n);
    }
    return true;
}

bool spool::read(std::uint64_t offset, std::size_t n, std::string& out, std::string& error) const
{
    if (offset >= size_) return true;
    n = static_cast<std::size_t>(std::min<std::uint64_t>(n, size_ - offset));
    if (fd_ < 0) {
        out.append(memory_, static_cast<std::size_t>(offset), n);
        return true;
    }
    const std::size_t at = out.size();
    out.resize(at + n);
    std::size_t got = 0;
    while (got < n) {
        const ssize_t r = ::pread(fd_, out.data() + at + got, n - got, static_cast<off_t>(offset + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            out.resize(at);
            error = os_error("cannot read the spool file", std::string());
            return false;
        }
        got += static_cast<std::size_t>(r);
    }
    return true;
}

// ---- edits -----------------------------------------------------------------------------------

bool lmtp_refuses(std::int32_t op) noexcept
{
    return op == ASIOSMTPD_EDIT_ADD_RCPT || op == ASIOSMTPD_EDIT_DELETE_RCPT;
}

std::string check_edit(const asiosmtpd_edit& e, edit_op& out)
{
    if (!ASIOSMTPD_HAS(&e, asiosmtpd_edit, param_count)) return "asiosmtpd_edit too small (struct_size)";
    out = edit_op{};
    out.op = e.op;
    out.index = e.index;
    switch (e.op) {
    case ASIOSMTPD_EDIT_ADD_HEADER:
    case ASIOSMTPD_EDIT_INSERT_HEADER:
    case ASIOSMTPD_EDIT_CHANGE_HEADER:
    case ASIOSMTPD_EDIT_DELETE_HEADER: {
        if (!valid_header_name(view(e.name))) return "malformed header name";
        if ((e.op == ASIOSMTPD_EDIT_CHANGE_HEADER || e.op == ASIOSMTPD_EDIT_DELETE_HEADER) && e.index == 0)
            return "header occurrences count from 1";
        out.name.assign(view(e.name));
        if (e.op == ASIOSMTPD_EDIT_DELETE_HEADER) return {};
        return header_value(view(e.value), out.value);
    }
    case ASIOSMTPD_EDIT_REPLACE_BODY: out.value.assign(view(e.value)); return {};
    case ASIOSMTPD_EDIT_CHANGE_SENDER:
    case ASIOSMTPD_EDIT_ADD_RCPT:
    case ASIOSMTPD_EDIT_DELETE_RCPT: {
        if (std::string problem = checked_address(view(e.name), e.op == ASIOSMTPD_EDIT_CHANGE_SENDER, out.name);
            !problem.empty())
            return problem;
        if (e.op == ASIOSMTPD_EDIT_DELETE_RCPT) return {};
        if (e.param_count > 0 && e.params == nullptr) return "params is NULL";
        if (e.param_count > 64) return "more than 64 parameters";
        for (std::size_t i = 0; i < e.param_count; ++i) {
            const std::string_view p = view(e.params[i]);
            if (std::string problem = checked_param(p); !problem.empty()) return problem;
            out.params.emplace_back(p);
        }
        return {};
    }
    default: return "unknown edit op " + std::to_string(e.op);
    }
}

void record_edit(edit_batch& batch, edit_op op, const spool_settings& settings)
{
    if (op.op != ASIOSMTPD_EDIT_REPLACE_BODY) {
        batch.ops.push_back(std::move(op));
        return;
    }
    if (!batch.body) batch.body = std::make_unique<spool>(settings);
    if (!batch.failed.empty()) return;
    std::string error;
    if (!batch.body->append(op.value, error)) batch.failed = "the new body could not be held: " + error;
}

// ---- draft -----------------------------------------------------------------------------------

draft::draft(const proto::envelope& env, std::string_view content, const spool* held, spool_settings settings)
    : content_(content),
      held_(held),
      settings_(std::move(settings)),
      mail_from_(env.mail_from),
      mail_params_(env.mail_options)
{
    rcpts_.reserve(env.rcpt_tos.size());
    for (std::size_t i = 0; i < env.rcpt_tos.size(); ++i)
        rcpts_.push_back(
            {env.rcpt_tos[i], i < env.rcpt_options.size() ? env.rcpt_options[i] : std::vector<std::string>{}});
}

std::uint64_t draft::source_size() const noexcept { return held_ != nullptr ? held_->size() : content_.size(); }

bool draft::source_read(std::uint64_t offset, std::size_t n, std::string& out, std::string& error) const
{
    if (held_ != nullptr) return held_->read(offset, n, out, error);
    if (offset < content_.size()) out.append(content_.substr(static_cast<std::size_t>(offset), n));
    return true;
}

std::uint64_t draft::size() const noexcept
{
    if (!message_changed()) return source_size();
    const std::uint64_t rest = body_ ? separator_.size() + body_->size() : source_size() - body_offset_;
    return header_text_.size() + rest;
}

bool draft::read(std::uint64_t offset, std::size_t n, std::string& out, std::string& error) const
{
    if (!message_changed()) return source_read(offset, n, out, error);
    // The pieces: the header block, then the client's rest or the separator and the new body.
    if (offset < header_text_.size()) {
        const std::size_t take = std::min<std::size_t>(n, header_text_.size() - static_cast<std::size_t>(offset));
        out.append(header_text_, static_cast<std::size_t>(offset), take);
        n -= take;
        offset += take;
    }
    offset -= header_text_.size();
    if (n == 0) return true;
    if (!body_) return source_read(body_offset_ + offset, n, out, error);
    if (offset < separator_.size()) {
        const std::size_t take = std::min<std::size_t>(n, separator_.size() - static_cast<std::size_t>(offset));
        out.append(separator_, static_cast<std::size_t>(offset), take);
        n -= take;
        offset += take;
    }
    offset -= separator_.size();
    return n == 0 || body_->read(offset, n, out, error);
}

bool draft::whole(std::string_view& out, std::string& error)
{
    if (!message_changed() && held_ == nullptr) {
        out = content_;
        return true;
    }
    if (!whole_valid_) {
        whole_.clear();
        if (!read(0, static_cast<std::size_t>(size()), whole_, error)) return false;
        whole_valid_ = true;
    }
    out = whole_;
    return true;
}

// The client's header block: the fields up to the empty line (or the first line that is not a
// field, or the end). What follows, the empty line included, is the rest.
bool draft::parse_headers(std::string& error)
{
    constexpr std::size_t piece = 64 * 1024;
    std::string buf;
    std::uint64_t base = 0;  // source offset of buf[0]
    std::size_t pos = 0;     // the next line starts at buf[pos]
    const std::uint64_t total = source_size();
    for (;;) {
        std::size_t eol = buf.find('\n', pos);
        while (eol == std::string::npos && base + buf.size() < total) {
            if (!source_read(base + buf.size(), piece, buf, error)) return false;
            eol = buf.find('\n', pos);
        }
        const std::size_t end = eol == std::string::npos ? buf.size() : eol + 1;
        if (pos == end) break;  // the end of the message: no body
        std::string_view line(buf.data() + pos, end - pos);
        std::string_view text = line;
        while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
        if (text.empty()) break;  // the empty line: the body follows
        if ((text.front() == ' ' || text.front() == '\t') && !fields_.empty()) {
            fields_.back().raw.append(line);
        } else {
            const std::size_t colon = text.find(':');
            if (colon == std::string_view::npos || !valid_header_name(text.substr(0, colon))) break;
            fields_.push_back({std::string(text.substr(0, colon)), std::string(line)});
        }
        pos = end;
        // Keep the buffer small: what was parsed is in fields_.
        if (pos > piece) {
            base += pos;
            buf.erase(0, pos);
            pos = 0;
        }
    }
    body_offset_ = base + pos;
    // A last field without a line end (a message of headers only) gets one, so that fields
    // added after it start on a line of their own.
    if (!fields_.empty() && fields_.back().raw.back() != '\n') fields_.back().raw.append("\r\n");
    headers_parsed_ = true;
    return true;
}

std::size_t draft::find_field(std::string_view name, std::size_t occurrence) const noexcept
{
    for (std::size_t i = 0; i < fields_.size(); ++i)
        if (iequal(fields_[i].name, name) && --occurrence == 0) return i;
    return fields_.size();
}

void draft::apply_header(const edit_op& e)
{
    const auto make = [&e](std::string_view name) {
        std::string raw(name);
        raw.push_back(':');
        if (e.value.empty() || (e.value.front() != ' ' && e.value.front() != '\t')) raw.push_back(' ');
        raw.append(e.value).append("\r\n");
        return field{std::string(name), std::move(raw)};
    };
    switch (e.op) {
    case ASIOSMTPD_EDIT_ADD_HEADER: fields_.push_back(make(e.name)); break;
    case ASIOSMTPD_EDIT_INSERT_HEADER: {
        const std::size_t at = std::min(e.index, fields_.size());
        fields_.insert(fields_.begin() + static_cast<std::ptrdiff_t>(at), make(e.name));
        break;
    }
    case ASIOSMTPD_EDIT_CHANGE_HEADER: {
        const std::size_t i = find_field(e.name, e.index);
        if (i == fields_.size()) fields_.push_back(make(e.name));  // none: added (Postfix)
        else fields_[i] = make(fields_[i].name);
        break;
    }
    case ASIOSMTPD_EDIT_DELETE_HEADER: {
        const std::size_t i = find_field(e.name, e.index);
        if (i != fields_.size()) fields_.erase(fields_.begin() + static_cast<std::ptrdiff_t>(i));
        break;
    }
    default: break;
    }
}

void draft::rebuild_header_text()
{
    header_text_.clear();
    for (const field& f : fields_) header_text_.append(f.raw);
}

bool draft::apply(edit_batch batch, std::string& error)
{
    if (!batch.failed.empty()) {
        error = std::move(batch.failed);
        return false;
    }
    const bool headers = std::any_of(batch.ops.begin(), batch.ops.end(),
                                     [](const edit_op& e) { return e.op <= ASIOSMTPD_EDIT_DELETE_HEADER; });
    if ((headers || batch.body) && !headers_parsed_ && !parse_headers(error)) {
        fields_.clear();
        return false;
    }
    for (edit_op& e : batch.ops) {
        switch (e.op) {
        case ASIOSMTPD_EDIT_CHANGE_SENDER:
            mail_from_ = std::move(e.name);
            mail_params_ = std::move(e.params);
            break;
        case ASIOSMTPD_EDIT_ADD_RCPT: {
            const auto it = std::find_if(rcpts_.begin(), rcpts_.end(),
                                         [&e](const draft_rcpt& r) { return iequal(r.address, e.name); });
            if (it != rcpts_.end()) it->params = std::move(e.params);
            else rcpts_.push_back({std::move(e.name), std::move(e.params)});
            break;
        }
        case ASIOSMTPD_EDIT_DELETE_RCPT:
            std::erase_if(rcpts_, [&e](const draft_rcpt& r) { return iequal(r.address, e.name); });
            break;
        default: apply_header(e); break;
        }
    }
    if (batch.body) {
        body_ = std::move(batch.body);
        separator_ = "\r\n";
    }
    if (headers || body_) rebuild_header_text();
    whole_valid_ = false;
    return true;
}

}  // namespace asiosmtpd::plugin
