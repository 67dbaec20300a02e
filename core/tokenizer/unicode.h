// UTF-8 helpers shared by the tokenizer.json components: decoding with the library's (Rust's)
// treatment of ill-formed bytes, the character classes its regexes and strips use, GPT-2's
// ByteLevel alphabet, and the UTF-16 form ICU's regex engine wants.
#pragma once

#include <unicode/uchar.h>
#include <unicode/utypes.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace forge::tok {

constexpr char32_t kIllFormed = 0x110000;  // next_char's code point for ill-formed bytes

// The character at s[i] (i < s.size()): its length in bytes, and its code point in *cp. Ill-formed
// bytes make one "character" as long as their maximal subpart (at least 1 byte), with *cp =
// kIllFormed: exactly what one U+FFFD replaces in Rust's from_utf8_lossy and Python's decode.
inline size_t next_char(std::string_view s, size_t i, char32_t* cp) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const unsigned char b0 = p[i];
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  char32_t c;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    c = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    c = b0 & 0x0F;
    if (b0 == 0xE0)
      lo = 0xA0;  // no overlong forms
    else if (b0 == 0xED)
      hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    c = b0 & 0x07;
    if (b0 == 0xF0)
      lo = 0x90;
    else if (b0 == 0xF4)
      hi = 0x8F;  // nothing above U+10FFFF
  } else {
    *cp = kIllFormed;
    return 1;
  }
  size_t k = 1;
  for (; k <= need && i + k < s.size(); ++k) {
    const unsigned char b = p[i + k];
    if (b < lo || b > hi) break;
    lo = 0x80;
    hi = 0xBF;
    c = (c << 6) | (b & 0x3F);
  }
  if (k <= need) {
    *cp = kIllFormed;
    return k;
  }
  *cp = c;
  return need + 1;
}

void append_utf8(std::string& out, char32_t c);

// Rust's String::from_utf8_lossy.
std::string utf8_lossy(std::string_view bytes);

// Whitespace as Rust's char::is_whitespace and the regex crate's \s: the White_Space property.
inline bool is_space(char32_t c) { return c != kIllFormed && u_isUWhiteSpace(static_cast<UChar32>(c)); }

// The regex crate's Unicode \w (HF's single_word test).
bool is_word_char(char32_t c);

// Rust's char::is_numeric (HF's Digits): general categories Nd, Nl, No.
bool is_numeric(UChar32 c);

// Start of the character that ends just before s[end] (end > 0).
size_t prev_char_start(std::string_view s, size_t end);

// The span of the character that holds byte `pos` of `s`.
std::pair<uint32_t, uint32_t> char_around(std::string_view s, size_t pos);

// Characters at the start (or end) of a token string that the ByteLevel post-processor trims off
// its offsets: "Ġ" (the byte-level space) and whitespace.
size_t count_spaces(std::string_view token, bool leading);

// GPT-2's bytes_to_unicode: printable Latin-1 bytes are themselves, the other 68 bytes become
// U+0100.. in byte order, so every byte is one visible character (all below U+0144).
struct ByteAlphabet {
  static constexpr char32_t kEnd = 0x144;
  std::array<UChar, 256> to_cp{};
  std::array<int16_t, kEnd> to_byte{};
  ByteAlphabet();
};
const ByteAlphabet& alphabet();

// The raw bytes a ByteLevel token string stands for; false when a character is outside the
// alphabet (the ByteLevel decoder then keeps the token's own UTF-8, and BPE can never produce it).
bool unmap_bytes(std::string_view token, std::string* out);

// The UTF-16 form of a piece for ICU, with the piece byte where each code unit's character starts.
struct Utf16 {
  std::vector<UChar> units;
  std::vector<uint32_t> byte_at;  // size units + 1; the last entry is the piece's length
};
// Mapped pieces (ByteLevel's alphabet) are one code unit per byte; the others are decoded as UTF-8.
void to_utf16(std::string_view bytes, bool mapped, Utf16* u);

// Heterogeneous lookup (string_view keys) for the byte-string maps on the hot path.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

}  // namespace forge::tok
