// Private: what a file that a reader cannot parse looks like instead, from its first bytes, so the error
// says what to do. The common case is a PyTorch checkpoint (`torch.save`, the format most PyTorch users
// have) given where natgrad reads safetensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace natgrad {
namespace detail {

/// How to convert a PyTorch checkpoint, for an error message.
inline constexpr const char* kConvertCheckpoint =
    "load it in Python and write it with tools/export_torch.py: save_safetensors(path, model.state_dict()) "
    "for weights, export_data(path, inputs, targets) for data";

/// "a zip archive (what torch.save writes)", "a Python pickle (…)", "a JSON text", or "" for anything else,
/// from the file's first n bytes: a zip local-file header (PK\x03\x04), a pickle's PROTO opcode 0x80 with
/// protocol 2 to 5, or '{' as the first byte that is not white space.
inline std::string foreign_format(const uint8_t* p, std::size_t n) {
  if (n >= 4 && p[0] == 'P' && p[1] == 'K' && p[2] == 3 && p[3] == 4)
    return "a zip archive (what torch.save writes)";
  if (n >= 2 && p[0] == 0x80 && p[1] >= 2 && p[1] <= 5)
    return "a Python pickle (what torch.save wrote before PyTorch 1.6, or pickle.dump)";
  for (std::size_t i = 0; i < n; ++i) {
    if (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r') continue;
    if (p[i] == '{') return "a JSON text";
    break;
  }
  return "";
}

/// Whether `kind` (from foreign_format) is a PyTorch checkpoint.
inline bool is_checkpoint(const std::string& kind) {
  return kind.rfind("a zip", 0) == 0 || kind.rfind("a Python", 0) == 0;
}

}  // namespace detail
}  // namespace natgrad
