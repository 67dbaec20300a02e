// What forge checks in an image file before stb_image sees it: the format
// (PNG or JPEG, by signature) and, in JPEGs, the tables that stb_image 2.27
// (Debian 12) trusts. A Huffman table declaring more than 256 codes
// overflows its symbol array, and a scan that uses a Huffman table no DHT
// segment defined decodes with uninitialised memory and reads out of bounds
// (both found by fuzz/image_decode.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace forge {

// FormatError naming `name` when the bytes are neither PNG nor JPEG, or when
// a JPEG's tables are malformed or missing.
void check_image_container(const uint8_t* bytes, size_t size, const std::string& name);

}  // namespace forge
