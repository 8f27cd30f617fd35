// libFuzzer target: the CSV reader. First byte chooses the likelihood and the input width (1–4 features),
// the rest is the text.
#include <natgrad/io/dataset_io.h>

#include <stdexcept>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const natgrad::LikelihoodKind kind = static_cast<natgrad::LikelihoodKind>(data[0] % 3);
  const natgrad::Index features = 1 + (data[0] >> 2) % 4;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    const auto d = natgrad::parse_csv<double>(text, {features}, kind, 2, "fuzz");
    if (d.inputs.rows() != features) __builtin_trap();
    if (kind == natgrad::LikelihoodKind::categorical && static_cast<natgrad::Index>(d.labels.size()) != d.size())
      __builtin_trap();
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
