// libFuzzer target: the model-spec parser (JSON → validated, chaining layers) rejects bad text with
// std::invalid_argument only; an accepted spec round-trips through model_spec_to_json.
#include <natgrad/io/model_spec_json.h>

#include <cstdlib>
#include <stdexcept>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const natgrad::ModelFile m = natgrad::parse_model_spec(text, "fuzz");
    const std::string again = natgrad::model_spec_to_json(m);
    if (natgrad::model_spec_to_json(natgrad::parse_model_spec(again, "fuzz-again")) != again) std::abort();
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
