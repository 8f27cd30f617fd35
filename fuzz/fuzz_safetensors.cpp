// libFuzzer target: the safetensors reader must reject any byte string with std::invalid_argument, never
// crash, leak, overflow or allocate absurdly; what it accepts must be readable in full.
#include <natgrad/io/safetensors.h>

#include <stdexcept>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const natgrad::SafetensorsFile f = natgrad::SafetensorsFile::parse(std::vector<uint8_t>(data, data + size), "fuzz");
    for (const std::string& name : f.names()) {
      if (f.info(name).numel() > (1 << 22)) continue;  // readable, but not worth converting here
      (void)f.get<double>(name);
      (void)f.get<float>(name);
    }
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
