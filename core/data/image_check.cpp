#include "core/data/image_check.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "forge/error.h"

namespace forge {

namespace {

// The JPEG tables stb_image trusts. Every DHT segment, before and between
// scans: each table's 16 code counts add up to at most 256 symbols, inside
// the segment (more overflows stb's symbol array). Every scan: the Huffman
// and quantization tables it uses were defined by an earlier DHT or DQT
// segment (stb_image 2.27 does not clear its tables, so an undefined one is
// uninitialised memory and its decoder indexes out of bounds).
class JpegTables {
 public:
  JpegTables(const uint8_t* b, size_t size, const std::string& name) : b_(b), size_(size), name_(name) {}

  void check() {
    size_t i = 2;  // after SOI
    while (i + 1 < size_) {
      if (b_[i] != 0xFF) {  // entropy-coded data of a scan: skip to the next marker
        ++i;
        continue;
      }
      const uint8_t m = b_[i + 1];
      if (m == 0xFF) {  // fill byte
        ++i;
        continue;
      }
      if (m == 0x00 || (m >= 0xD0 && m <= 0xD7) || m == 0x01) {  // stuffed byte, restart markers, TEM
        i += 2;
        continue;
      }
      if (m == 0xD9) return;     // EOI
      if (i + 4 > size_) return;  // truncated: stb_image reports it
      const size_t len = (static_cast<size_t>(b_[i + 2]) << 8) | b_[i + 3];
      if (len < 2) throw bad(i, "a segment shorter than its length field");
      const size_t end = std::min(size_, i + 2 + len);
      if (m == 0xC4) huffman_tables(i + 4, end);
      if (m == 0xDB) quantization_tables(i + 4, end);
      if (m == 0xC0 || m == 0xC1 || m == 0xC2) frame(i + 4, end, m == 0xC2);
      if (m == 0xDA) scan(i, end);
      i += 2 + len;
    }
  }

 private:
  FormatError bad(size_t at, const std::string& what) const {
    return FormatError(fmt::format("{}: not a valid JPEG at byte {}: {}", name_, at, what));
  }

  void huffman_tables(size_t p, size_t end) {
    while (p < end) {
      if (p + 17 > end) throw bad(p, "a Huffman table cut short");
      size_t codes = 0;
      for (int k = 1; k <= 16; ++k) codes += b_[p + k];
      if (codes > 256) throw bad(p, fmt::format("a Huffman table declaring {} codes, more than 256", codes));
      const int cls = b_[p] >> 4, id = b_[p] & 15;
      if (cls <= 1 && id <= 3) huffman_[cls][id] = true;  // others: stb_image refuses them
      p += 17 + codes;
    }
  }

  void quantization_tables(size_t p, size_t end) {
    while (p < end) {
      const int precision = b_[p] >> 4, id = b_[p] & 15;
      if (precision <= 1 && id <= 3) quant_[id] = true;
      p += 1 + 64 * (precision ? 2 : 1);
    }
  }

  void frame(size_t p, size_t end, bool progressive) {
    progressive_ = progressive;
    components_.clear();
    if (p + 6 > end) return;
    const size_t n = b_[p + 5];
    for (size_t k = 0; k < n && p + 6 + 3 * k + 2 < end; ++k)
      components_.push_back({b_[p + 6 + 3 * k], static_cast<uint8_t>(b_[p + 6 + 3 * k + 2] & 15)});
  }

  void scan(size_t at, size_t end) {
    const size_t p = at + 4;
    if (p >= end) return;
    const size_t n = b_[p];
    if (p + 1 + 2 * n + 3 > end) return;  // stb_image reports a short SOS
    const uint8_t ss = b_[p + 1 + 2 * n], ah = b_[p + 3 + 2 * n] >> 4;
    // Baseline scans decode DC and AC; progressive ones DC (first pass only) or AC.
    const bool uses_dc = !progressive_ || (ss == 0 && ah == 0);
    const bool uses_ac = !progressive_ || ss > 0;
    for (size_t k = 0; k < n; ++k) {
      const uint8_t id = b_[p + 1 + 2 * k], dc = b_[p + 2 + 2 * k] >> 4, ac = b_[p + 2 + 2 * k] & 15;
      if (uses_dc && dc <= 3 && !huffman_[0][dc])
        throw bad(at, fmt::format("a scan uses DC Huffman table {}, which no DHT segment before it defines", dc));
      if (uses_ac && ac <= 3 && !huffman_[1][ac])
        throw bad(at, fmt::format("a scan uses AC Huffman table {}, which no DHT segment before it defines", ac));
      for (const auto& c : components_)
        if (c.id == id && c.quant <= 3 && !quant_[c.quant])
          throw bad(at, fmt::format("a scan uses quantization table {}, which no DQT segment before it defines",
                                    c.quant));
    }
  }

  struct Component {
    uint8_t id, quant;
  };
  const uint8_t* b_;
  size_t size_;
  const std::string& name_;
  bool huffman_[2][4] = {};
  bool quant_[4] = {};
  bool progressive_ = false;
  std::vector<Component> components_;
};

}  // namespace

void check_image_container(const uint8_t* b, size_t size, const std::string& name) {
  static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (size >= 8 && std::memcmp(b, kPng, 8) == 0) return;
  if (size >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return JpegTables(b, size, name).check();
  std::string head;
  for (size_t i = 0; i < std::min<size_t>(size, 4); ++i) head += fmt::format("{:02x}", b[i]);
  throw FormatError(fmt::format("{}: not a PNG or JPEG file (it starts with bytes {}); forge reads PNG and JPEG, "
                                "so convert it",
                                name, head.empty() ? "(none: empty)" : head));
}

}  // namespace forge
