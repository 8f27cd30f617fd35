// libFuzzer target: load_dataset and count_samples, the entry points the command line uses, on files
// written from the fuzzer's bytes. Byte 0 chooses the format (safetensors, CSV, text with --context 3, an
// IDX directory plain, gzip-compressed here, or the bytes as a .gz file as is) and the likelihood; bytes
// 1 and 2 choose a share [first, first + count) as a rank would read it; the rest is the file (for IDX, the
// images file; the labels file is made to match its count). Checked, whenever the whole file loads:
//   - count_samples agrees with the number of samples the whole read returned;
//   - the share loads when it lies within the samples, and equals the same samples of the whole read;
//     a share beyond the samples is refused;
// and that nothing but std::invalid_argument ever escapes.
#include <natgrad/io/dataset_io.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace {

using natgrad::Dataset;
using natgrad::Index;
using natgrad::LikelihoodKind;

const std::string& work_dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/natgrad_fuzz_dataset_XXXXXX";
    if (!::mkdtemp(tmpl)) std::abort();
    const std::string d = tmpl;
    ::mkdir((d + "/idx").c_str(), 0700);
    ::mkdir((d + "/idxgz").c_str(), 0700);
    return d;
  }();
  return dir;
}

void write_file(const std::string& path, const uint8_t* p, size_t n, bool gzip) {
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb1");
    if (!f) std::abort();
    if (n > 0 && gzwrite(f, p, unsigned(n)) != int(n)) std::abort();
    gzclose(f);
    return;
  }
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (n > 0 && std::fwrite(p, 1, n, f) != n) std::abort();
  std::fclose(f);
}

// An IDX labels file with as many labels (0, 1, 0, …) as the images file's header promises images.
std::string labels_for(const uint8_t* images, size_t n) {
  uint32_t count = n >= 8 ? (uint32_t(images[4]) << 24) | (uint32_t(images[5]) << 16) |
                                (uint32_t(images[6]) << 8) | images[7]
                          : 0;
  if (count > 4096) count = 1;
  std::string s{0, 0, 8, 1, char(count >> 24), char(count >> 16), char(count >> 8), char(count)};
  for (uint32_t k = 0; k < count; ++k) s.push_back(char(k % 2));
  return s;
}

template <typename T>
bool same(const T& a, const T& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && (a.size() == 0 || a == b);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const int format = data[0] % 6;
  const auto likelihood = static_cast<LikelihoodKind>((data[0] / 6) % 3);
  const Index first = data[1] % 16, count = data[2] % 16;
  const uint8_t* file = data + 3;
  const size_t n = size - 3;
  const std::string dir = work_dir();
  std::string path;
  natgrad::Shape shape{2};
  LikelihoodKind kind = likelihood;
  Index C = likelihood == LikelihoodKind::categorical ? 3 : 2, T = 1, context = 0;
  switch (format) {
    case 0:
      path = dir + "/d.safetensors";
      write_file(path, file, n, false);
      break;
    case 1:
      path = dir + "/d.csv";
      write_file(path, file, n, false);
      break;
    case 2:  // byte-level text, windows of 3 + 1 bytes
      path = dir + "/d.txt";
      write_file(path, file, n, false);
      shape = {3};
      kind = LikelihoodKind::categorical;
      C = 256;
      T = context = 3;
      break;
    default: {  // an IDX directory of 2×2 images: plain, compressed here, or the bytes as a .gz file
      const bool gz = format != 3;
      path = dir + (gz ? "/idxgz" : "/idx");
      const std::string ext = gz ? ".gz" : "";
      write_file(path + "/train-images-idx3-ubyte" + ext, file, n, format == 4);
      const std::string labels = labels_for(file, n);
      write_file(path + "/train-labels-idx1-ubyte" + ext, reinterpret_cast<const uint8_t*>(labels.data()),
                 labels.size(), gz);
      shape = {1, 2, 2};
      kind = LikelihoodKind::categorical;
      C = 2;
    }
  }
  Dataset<float> whole;
  try {
    whole = natgrad::load_dataset<float>(path, shape, kind, C, natgrad::Split::train, 0, T, context);
  } catch (const std::invalid_argument&) {
    try {  // a file the loader refuses may still have a countable header; only the exception type matters
      (void)natgrad::count_samples(path, natgrad::Split::train, context);
    } catch (const std::invalid_argument&) {
    }
    return 0;
  }
  const Index N = whole.size();
  if (natgrad::count_samples(path, natgrad::Split::train, context) != N) __builtin_trap();
  const bool inside = first + count <= N && first < N;
  try {
    const Dataset<float> part =
        natgrad::load_dataset<float>(path, shape, kind, C, natgrad::Split::train, count, T, context, first);
    if (!inside) __builtin_trap();  // a share beyond the samples was accepted
    const Dataset<float> want = whole.slice(first, count > 0 ? count : N - first);
    if (!same(part.inputs, want.inputs) || part.labels != want.labels || !same(part.targets, want.targets))
      __builtin_trap();
  } catch (const std::invalid_argument&) {
    if (inside) __builtin_trap();  // the whole file loads, so must every share of it
  }
  return 0;
}
