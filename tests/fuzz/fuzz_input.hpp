// SPDX-License-Identifier: Apache-2.0
// fuzz_input: a tiny reader over a fuzzer input, shared by the fuzz targets (clang's
// FuzzedDataProvider is not available to the g++ replay build). Bytes are taken from the front;
// "control" bytes from a separate region cycle, so that a short control region can drive a long
// run and an empty one gives fixed defaults.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace asiosmtpd::fuzz {

class byte_reader {
public:
    byte_reader(const std::uint8_t* data, std::size_t size) noexcept : data_(data), size_(size) {}

    /// The next byte, or 0 at the end.
    std::uint8_t byte() noexcept { return pos_ < size_ ? data_[pos_++] : std::uint8_t{0}; }
    /// Nothing left to take.
    [[nodiscard]] bool done() const noexcept { return pos_ >= size_; }
    /// Everything not taken yet.
    std::string_view rest() noexcept
    {
        const std::string_view r(reinterpret_cast<const char*>(data_) + pos_, size_ - pos_);
        pos_ = size_;
        return r;
    }
    /// The last n bytes (fewer if there are not that many); they are no longer in rest().
    std::string_view take_back(std::size_t n) noexcept
    {
        if (n > size_ - pos_) n = size_ - pos_;
        size_ -= n;
        return {reinterpret_cast<const char*>(data_) + size_, n};
    }

private:
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t pos_ = 0;
};

/// Control bytes, used round-robin; `fallback` when there are none.
class controls {
public:
    explicit controls(std::string_view bytes) noexcept : bytes_(bytes) {}
    std::uint8_t next(std::uint8_t fallback) noexcept
    {
        if (bytes_.empty()) return fallback;
        const auto b = static_cast<std::uint8_t>(bytes_[at_]);
        at_ = (at_ + 1) % bytes_.size();
        return b;
    }

private:
    std::string_view bytes_;
    std::size_t at_ = 0;
};

}  // namespace asiosmtpd::fuzz
