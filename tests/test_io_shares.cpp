// A rank's share of a data file: for every format, the loader returns for any range of samples a rank may
// be given exactly the values this test wrote for those samples (the reference is the test's own formula,
// not another read), and holds only that share in memory while it reads, not the file.
#include <natgrad/distributed/communicator.h>
#include <natgrad/io/dataset_io.h>
#include <natgrad/io/safetensors.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>

#include "test_helpers.h"

using namespace natgrad;
using namespace natgrad::test;

namespace {

constexpr Index kN = 13;  // no rank count from 2 to 12 divides it

template <typename T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

void write_gzip(const std::string& p, const std::string& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
  gzclose(f);
}

// The ranges [first, first + count) that 1, 2, 3, 5 and 13 ranks read of kN samples (uneven shares, first
// and last rank, one-sample shares), and count 0 (to the end) from three starts.
std::vector<std::pair<Index, Index>> ranges() {
  std::vector<std::pair<Index, Index>> out;
  for (int K : {1, 2, 3, 5, 13})
    for (int r = 0; r < K; ++r) {
      const SampleShare s = share_of(kN, r, K);
      out.push_back({s.first, s.count});
    }
  for (Index first : {Index(0), Index(6), kN - 1}) out.push_back({first, 0});
  return out;
}

// Sample n's expected input k, label, and real target c, as the files below are written.
double input(Index n, Index k) { return 0.25 * double(n * 6 + k) - 3.0; }
int64_t label(Index n) { return (n * 5) % 3; }
double target(Index n, Index c) { return 0.5 * double(n) - double(c); }

// Checks `d` against the expected samples [first, first + n): inputs x(n, k), categorical labels
// (T per sample) or real targets.
void expect_samples(const Dataset<double>& d, Index first, Index n,
                    const std::function<double(Index, Index)>& x,
                    const std::function<int64_t(Index, Index)>& y, Index T, const std::string& what) {
  ASSERT_EQ(d.size(), n) << what;
  for (Index s = 0; s < n; ++s)
    for (Index k = 0; k < d.inputs.rows(); ++k)
      ASSERT_EQ(d.inputs(k, s), x(first + s, k)) << what << " sample " << s;
  if (y) {
    ASSERT_EQ(d.labels.size(), std::size_t(n * T)) << what;
    for (Index s = 0; s < n; ++s)
      for (Index t = 0; t < T; ++t)
        ASSERT_EQ(d.labels[std::size_t(s * T + t)], y(first + s, t)) << what << " sample " << s;
  } else {
    ASSERT_EQ(d.targets.cols(), n) << what;
    for (Index s = 0; s < n; ++s)
      for (Index c = 0; c < d.targets.rows(); ++c) ASSERT_EQ(d.targets(c, s), target(first + s, c)) << what;
  }
}

// Every range of `ranges()` read by load_dataset equals the expected samples, and a range that starts at
// the end (an empty share) is refused, naming the range.
void expect_every_share(const std::string& file, const Shape& shape, LikelihoodKind kind, Index C,
                        const std::function<double(Index, Index)>& x,
                        const std::function<int64_t(Index, Index)>& y, Index N = kN, Index T = 1,
                        Index context = 0) {
  EXPECT_EQ(count_samples(file, Split::train, context), N) << file;
  for (auto [first, count] : ranges()) {
    if (first >= N) continue;
    const Index n = count > 0 ? count : N - first;
    const Dataset<double> d =
        load_dataset<double>(file, shape, kind, C, Split::train, count, T, context, first);
    expect_samples(d, first, n, x, y, T,
                   file + " [" + std::to_string(first) + ", " + std::to_string(first + n) + ")");
  }
  EXPECT_ERROR(load_dataset<double>(file, shape, kind, C, Split::train, 0, T, context, N),
               "[" + std::to_string(N) + ", " + std::to_string(N) + ") lie beyond the " + std::to_string(N));
}

}  // namespace

TEST(ShareReads, SafetensorsEveryInputDtypeAndTargetKind) {
  std::vector<float> f32;
  std::vector<double> f64;
  std::vector<uint8_t> u8;
  std::vector<int64_t> i64, labels, per_position;
  std::vector<float> targets;
  for (Index n = 0; n < kN; ++n) {
    for (Index k = 0; k < 6; ++k) {
      f32.push_back(float(input(n, k)));
      f64.push_back(input(n, k));
      u8.push_back(uint8_t((n * 6 + k) * 3));
      i64.push_back(n * 6 + k);
    }
    labels.push_back(label(n));
    for (Index t = 0; t < 2; ++t) per_position.push_back((n + t) % 3);
    for (Index c = 0; c < 2; ++c) targets.push_back(float(target(n, c)));
  }
  const auto x = [](Index n, Index k) { return input(n, k); };
  const auto y = [](Index n, Index) { return label(n); };
  const Shape shape{2, 3};
  for (DType dt : {DType::F32, DType::F64, DType::U8, DType::I64}) {
    const void* data = dt == DType::F32   ? static_cast<const void*>(f32.data())
                       : dt == DType::F64 ? static_cast<const void*>(f64.data())
                       : dt == DType::U8  ? static_cast<const void*>(u8.data())
                                          : static_cast<const void*>(i64.data());
    const std::string file = path(std::string("in_") + to_string(dt) + ".safetensors");
    write_safetensors(file, {{"inputs", dt, {kN, 2, 3}, data}, {"targets", DType::I64, {kN}, labels.data()}});
    std::function<double(Index, Index)> want = x;
    if (dt == DType::U8) want = [](Index n, Index k) { return double(uint8_t((n * 6 + k) * 3)) / 255.0; };
    if (dt == DType::I64) want = [](Index n, Index k) { return double(n * 6 + k); };
    expect_every_share(file, shape, LikelihoodKind::categorical, 3, want, y);
  }
  // Real targets [N, C], and class indices per position [N, T].
  write_safetensors(path("gauss.safetensors"), {{"inputs", DType::F64, {kN, 6}, f64.data()},
                                                {"targets", DType::F32, {kN, 2}, targets.data()}});
  expect_every_share(path("gauss.safetensors"), {6}, LikelihoodKind::gaussian, 2, x, nullptr);
  write_safetensors(path("positions.safetensors"), {{"inputs", DType::F32, {kN, 2, 3}, f32.data()},
                                                    {"targets", DType::I64, {kN, 2}, per_position.data()}});
  expect_every_share(
      path("positions.safetensors"), shape, LikelihoodKind::categorical, 3, x,
      [](Index n, Index t) { return int64_t((n + t) % 3); }, kN, 2);
}

TEST(ShareReads, SafetensorsRowsAtTheEndAndEmptyRanges) {
  std::vector<float> v(kN * 4);
  for (std::size_t k = 0; k < v.size(); ++k) v[k] = float(k);
  write_safetensors(path("rows.safetensors"), {{"x", DType::F32, {kN, 4}, v.data()}});
  const SafetensorsFile f = SafetensorsFile::read(path("rows.safetensors"));
  EXPECT_EQ(f.get_rows<float>("x", kN - 1, 1), std::vector<float>(v.end() - 4, v.end()));
  EXPECT_TRUE(f.get_rows<float>("x", kN, 0).empty());
  EXPECT_TRUE(f.get_rows<float>("x", 0, 0).empty());
  std::vector<double> out(8);
  f.read_rows<double>("x", 5, 2, out.data());
  EXPECT_EQ(out, std::vector<double>(v.begin() + 20, v.begin() + 28));
  EXPECT_ERROR(f.get_rows<float>("x", kN - 1, 2), "rows [12, 14) of tensor \"x\" lie beyond its 13");
  EXPECT_ERROR(f.get_rows<float>("x", -1, 1), "lie beyond its 13");
  // The range is checked before the output is allocated: 2^50 rows is an error, not an allocation failure.
  EXPECT_ERROR(f.get_rows<float>("x", 0, int64_t(1) << 50), "lie beyond its 13");
}

TEST(ShareReads, CsvWithAndWithoutHeader) {
  const auto x = [](Index n, Index k) { return input(n, k); };
  const auto y = [](Index n, Index) { return label(n); };
  int i = 0;
  for (const std::string header : {"", "x0,x1,x2,x3,x4,x5,label\n", "0,1,2,3,4,5,label\r\n"}) {
    std::ostringstream csv;
    csv << header;
    for (Index n = 0; n < kN; ++n) {
      for (Index k = 0; k < 6; ++k) csv << input(n, k) << ",";
      csv << label(n) << (n % 4 == 0 ? "\r\n" : "\n") << (n == 6 ? "\n\n" : "");  // CRLF, blank lines
    }
    const std::string file = path("d" + std::to_string(i++) + ".csv");
    write_bytes(file, csv.str());
    expect_every_share(file, {6}, LikelihoodKind::categorical, 3, x, y);
  }
  // Real targets: the last C columns.
  std::ostringstream csv;
  for (Index n = 0; n < kN; ++n) {
    for (Index k = 0; k < 6; ++k) csv << input(n, k) << ",";
    csv << target(n, 0) << "," << target(n, 1) << "\n";
  }
  write_bytes(path("g.csv"), csv.str());
  expect_every_share(path("g.csv"), {6}, LikelihoodKind::gaussian, 2, x, nullptr);
  // A bad row is reported by the share that holds it, with its line number.
  write_bytes(path("bad.csv"), "1,0\n2,1\n3,x\n4,0\n");
  EXPECT_ERROR(
      load_dataset<double>(path("bad.csv"), {1}, LikelihoodKind::categorical, 2, Split::train, 2, 1, 0, 1),
      "bad.csv: line 3, column 2: \"x\" is not a number");
}

TEST(ShareReads, TextWindowsWithContext) {
  // Windows of T + 1 = 5 bytes; 3 bytes at the end make no window.
  std::string text;
  for (Index i = 0; i < kN * 5 + 3; ++i) text.push_back(char('a' + (i * 7) % 26));
  write_bytes(path("t.txt"), text);
  const auto byte = [&](Index at) { return double(static_cast<unsigned char>(text[std::size_t(at)])); };
  expect_every_share(
      path("t.txt"), {4}, LikelihoodKind::categorical, 256, [&](Index n, Index t) { return byte(n * 5 + t); },
      [&](Index n, Index t) { return int64_t(byte(n * 5 + t + 1)); }, kN, 4, 4);
}

TEST(ShareReads, IdxPlainAndGzip) {
  std::string pixels, classes;
  for (Index n = 0; n < kN; ++n) {
    for (Index k = 0; k < 6; ++k) pixels.push_back(char((n * 6 + k) * 5 % 256));
    classes.push_back(char(label(n)));
  }
  for (bool gz : {false, true}) {
    const std::string d = path(gz ? "idx_gz" : "idx_plain");
    mkdir(d.c_str(), 0755);
    const std::string images = idx_bytes({uint32_t(kN), 2, 3}, pixels),
                      labels = idx_bytes({uint32_t(kN)}, classes);
    if (gz) {
      write_gzip(d + "/train-images-idx3-ubyte.gz", images);
      write_gzip(d + "/train-labels-idx1-ubyte.gz", labels);
    } else {
      write_bytes(d + "/train-images-idx3-ubyte", images);
      write_bytes(d + "/train-labels-idx1-ubyte", labels);
    }
    expect_every_share(
        d, {1, 2, 3}, LikelihoodKind::categorical, 3,
        [](Index n, Index k) { return double((n * 6 + k) * 5 % 256) / 255.0; },
        [](Index n, Index) { return label(n); });
  }
}

namespace {

// A field of /proc/self/status in KiB ("VmRSS", "VmHWM").
long status_kib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, field.size() + 1, field + ":") == 0) return std::stol(line.substr(field.size() + 1));
  return -1;
}

// How much the peak resident size grows while f runs, in MiB: writing 5 to /proc/self/clear_refs resets the
// peak (VmHWM) to the current resident size (Linux ≥ 4.0). Negative if the kernel does not allow it.
template <typename F>
double peak_growth_mib(F f) {
  {
    std::ofstream reset("/proc/self/clear_refs");
    reset << "5";
    reset.flush();
    if (!reset) return -1;
  }
  const long before = status_kib("VmRSS");
  f();
  return double(status_kib("VmHWM") - before) / 1024.0;
}

void sparse_file(const std::string& p, const std::string& head, uint64_t size) {
  write_bytes(p, head);
  ASSERT_EQ(::truncate(p.c_str(), off_t(size)), 0);  // the rest reads as zeros and takes no disk space
}

}  // namespace

// Each format's file is 48 MiB; a share of one sample must not raise the peak resident size by more than
// 8 MiB (the readers hold a piece of at most 1 MiB, zlib's buffers, and the share). Reading the whole file,
// as every rank did before, raises it by at least the file's size.
TEST(ShareReads, OneSampleOfALargeFileHoldsTheShareNotTheFile) {
  constexpr uint64_t kMiB = 1 << 20, kBytes = 48 * kMiB;
  constexpr double kLimitMiB = 8;
  if (peak_growth_mib([] {}) < 0)
    GTEST_SKIP() << "/proc/self/clear_refs cannot reset the peak resident size here";

  // safetensors: [N, 1024] float32 inputs, I64 labels, zeros.
  const Index N = Index(kBytes / 4096);
  const std::string h =
      R"({"inputs":{"dtype":"F32","shape":[)" + std::to_string(N) + R"(,1024],"data_offsets":[0,)" +
      std::to_string(kBytes) + R"(]},"targets":{"dtype":"I64","shape":[)" + std::to_string(N) +
      R"(],"data_offsets":[)" + std::to_string(kBytes) + "," + std::to_string(kBytes + 8 * N) + "]}}";
  const std::string head = safetensors_bytes(h, "");
  sparse_file(path("big.safetensors"), head, head.size() + kBytes + 8 * N);
  double mib = peak_growth_mib([&] {
    const Dataset<float> d = load_dataset<float>(path("big.safetensors"), {1024}, LikelihoodKind::categorical,
                                                 2, Split::train, 1, 1, 0, N - 1);
    EXPECT_EQ(d.size(), 1);
  });
  EXPECT_LT(mib, kLimitMiB) << "safetensors";

  // Text: windows of 1024 bytes.
  sparse_file(path("big.txt"), "", kBytes);
  mib = peak_growth_mib([&] {
    EXPECT_EQ(load_dataset<float>(path("big.txt"), {1023}, LikelihoodKind::categorical, 256, Split::train, 1,
                                  1023, 1023, Index(kBytes / 1024) - 1)
                  .size(),
              1);
  });
  EXPECT_LT(mib, kLimitMiB) << "text";

  // IDX, plain and gzip: 32 × 32 images.
  const Index images = Index(kBytes / 1024);
  for (bool gz : {false, true}) {
    const std::string d = path(gz ? "big_idx_gz" : "big_idx");
    mkdir(d.c_str(), 0755);
    const std::string ih = idx_bytes({uint32_t(images), 32, 32}, ""), lh = idx_bytes({uint32_t(images)}, "");
    if (gz) {
      std::string zeros(kBytes, '\0');
      write_gzip(d + "/train-images-idx3-ubyte.gz", ih + zeros);
      write_gzip(d + "/train-labels-idx1-ubyte.gz", lh + std::string(std::size_t(images), '\0'));
    } else {
      sparse_file(d + "/train-images-idx3-ubyte", ih, ih.size() + kBytes);
      sparse_file(d + "/train-labels-idx1-ubyte", lh, lh.size() + uint64_t(images));
    }
    mib = peak_growth_mib([&] {
      EXPECT_EQ(load_dataset<float>(d, {1, 32, 32}, LikelihoodKind::categorical, 2, Split::train, 1, 1, 0,
                                    images - 1)
                    .size(),
                1);
    });
    EXPECT_LT(mib, kLimitMiB) << (gz ? "IDX gzip" : "IDX plain");
  }

  // CSV: rows "0,0\n"; the first rank's share of one sample (a later one reads the lines before it too).
  {
    std::ofstream csv(path("big.csv"), std::ios::binary);
    const std::string rows = [] {
      std::string s;
      for (int i = 0; i < (1 << 18); ++i) s += "0,0\n";
      return s;
    }();
    for (uint64_t written = 0; written < kBytes; written += rows.size()) csv << rows;
  }
  mib = peak_growth_mib([&] {
    EXPECT_EQ(
        load_dataset<float>(path("big.csv"), {1}, LikelihoodKind::categorical, 2, Split::train, 1).size(), 1);
  });
  EXPECT_LT(mib, kLimitMiB) << "CSV";
  for (const char* f : {"big.safetensors", "big.txt", "big.csv", "big_idx/train-images-idx3-ubyte",
                        "big_idx_gz/train-images-idx3-ubyte.gz"})
    std::remove(path(f).c_str());
}
