#include "core/tokenizer/unicode.h"

#include <unicode/utf16.h>

namespace forge::tok {

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Rust's String::from_utf8_lossy: the ByteLevel decoder's last step.
std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    char32_t c;
    const size_t n = next_char(bytes, i, &c);
    if (c == kIllFormed)
      out += "\xEF\xBF\xBD";
    else
      out.append(bytes.data() + i, n);
    i += n;
  }
  return out;
}

// The regex crate's Unicode \w (HF's single_word test).
bool is_word_char(char32_t c) {
  if (c == kIllFormed) return false;
  const auto u = static_cast<UChar32>(c);
  return u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL) ||
         (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

bool is_numeric(UChar32 c) { return (U_GET_GC_MASK(c) & (U_GC_ND_MASK | U_GC_NL_MASK | U_GC_NO_MASK)) != 0; }

// Start of the character that ends just before s[end] (end > 0).
size_t prev_char_start(std::string_view s, size_t end) {
  for (size_t back = 1; back <= 4 && back <= end; ++back) {
    const auto b = static_cast<unsigned char>(s[end - back]);
    if ((b & 0xC0) != 0x80 || back == end) {
      char32_t c;
      const size_t start = end - back;
      if (start + next_char(s, start, &c) == end) return start;
      if ((b & 0xC0) != 0x80) break;
    }
  }
  return end - 1;
}

// The span of the character that holds byte `pos` of `s`.
std::pair<uint32_t, uint32_t> char_around(std::string_view s, size_t pos) {
  for (size_t back = 0; back < 4 && back <= pos; ++back) {
    const auto b = static_cast<unsigned char>(s[pos - back]);
    if ((b & 0xC0) != 0x80) {
      char32_t c;
      const size_t start = pos - back;
      const size_t n = next_char(s, start, &c);
      if (start + n > pos) return {static_cast<uint32_t>(start), static_cast<uint32_t>(start + n)};
      break;
    }
  }
  return {static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + 1)};  // a stray continuation byte
}

// Characters at the start (or end) of a token string that the ByteLevel post-processor trims off
// its offsets: "Ġ" (the byte-level space) and whitespace.
size_t count_spaces(std::string_view token, bool leading) {
  size_t n = 0;
  if (leading) {
    for (size_t i = 0; i < token.size(); ++n) {
      char32_t c;
      const size_t len = next_char(token, i, &c);
      if (!(c == 0x120 || is_space(c))) break;
      i += len;
    }
  } else {
    for (size_t e = token.size(); e > 0; ++n) {
      const size_t p = prev_char_start(token, e);
      char32_t c;
      next_char(token, p, &c);
      if (!(c == 0x120 || is_space(c))) break;
      e = p;
    }
  }
  return n;
}

ByteAlphabet::ByteAlphabet() {
  to_byte.fill(-1);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool kept = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    to_cp[b] = static_cast<UChar>(kept ? b : 256 + extra++);
    to_byte[to_cp[b]] = static_cast<int16_t>(b);
  }
}

const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// The raw bytes a ByteLevel token string stands for; false when a character is outside the
// alphabet (the ByteLevel decoder then keeps the token's own UTF-8, and BPE can never produce it).
bool unmap_bytes(std::string_view token, std::string* out) {
  const ByteAlphabet& a = alphabet();
  out->clear();
  for (size_t i = 0; i < token.size();) {
    char32_t c;
    i += next_char(token, i, &c);
    if (c >= ByteAlphabet::kEnd || a.to_byte[c] < 0) return false;
    out->push_back(static_cast<char>(a.to_byte[c]));
  }
  return true;
}

void to_utf16(std::string_view bytes, bool mapped, Utf16* u) {
  u->units.clear();
  u->byte_at.clear();
  if (mapped) {
    const ByteAlphabet& a = alphabet();
    for (size_t i = 0; i < bytes.size(); ++i) {
      u->units.push_back(a.to_cp[static_cast<unsigned char>(bytes[i])]);
      u->byte_at.push_back(static_cast<uint32_t>(i));
    }
  } else {
    for (size_t i = 0; i < bytes.size();) {
      char32_t c;
      const size_t n = next_char(bytes, i, &c);
      if (c < 0x10000) {
        u->units.push_back(static_cast<UChar>(c));
        u->byte_at.push_back(static_cast<uint32_t>(i));
      } else if (c == kIllFormed) {
        u->units.push_back(0xFFFD);
        u->byte_at.push_back(static_cast<uint32_t>(i));
      } else {
        u->units.push_back(U16_LEAD(c));
        u->units.push_back(U16_TRAIL(c));
        u->byte_at.push_back(static_cast<uint32_t>(i));
        u->byte_at.push_back(static_cast<uint32_t>(i));
      }
      i += n;
    }
  }
  u->byte_at.push_back(static_cast<uint32_t>(bytes.size()));
}

}  // namespace forge::tok
