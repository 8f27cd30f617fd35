// safetensors, model spec, datasets and parameter files: round trips and every malformed input named in
// the I/O issue, each rejected with a message naming the file and the problem.
#include "test_helpers.h"

#include <natgrad/io/dataset_io.h>
#include <natgrad/io/model_spec_json.h>
#include <natgrad/io/parameters_io.h>
#include <natgrad/io/safetensors.h>

#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sys/stat.h>
#include <tuple>

using namespace natgrad;
using namespace natgrad::test;

namespace {

ModelFile small_model() {
  return parse_model_spec(R"({"input_shape": [1, 4, 4], "likelihood": "categorical", "layers": [
      {"type": "conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1},
      {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"},
      {"type": "linear", "in_features": 8, "out_features": 3}]})",
                          "inline");
}

}  // namespace

TEST(Safetensors, RoundTripIsBitExact) {
  const std::vector<float> f{1.5f, -2.25f, 3.0f, 1e-30f, -0.0f, 7.0f};
  const std::vector<double> d{M_PI, -1e300};
  const std::vector<int64_t> i{-5, 1ll << 40};
  write_safetensors(path("rt.safetensors"), {{"a.weight", DType::F32, {2, 3}, f.data()},
                                             {"b", DType::F64, {2}, d.data()},
                                             {"c", DType::I64, {2}, i.data()}},
                    {{"k", "v"}});
  const auto r = SafetensorsFile::read(path("rt.safetensors"));
  EXPECT_EQ(r.get<float>("a.weight"), f);
  EXPECT_EQ(r.get<double>("b"), d);
  EXPECT_EQ(r.get<int64_t>("c"), i);
  EXPECT_EQ(r.info("a.weight").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(r.metadata().at("k"), "v");
  // No temporary file is left behind.
  struct stat st;
  EXPECT_NE(::stat((path("rt.safetensors") + ".tmp." + std::to_string(getpid())).c_str(), &st), 0);
}

TEST(Safetensors, ReadsHalfBfloatIntAndByteTensors) {
  // F16 0x3C00 = 1, 0xC000 = -2, 0x0001 = 2^-24; BF16 0x3F80 = 1, 0x4049 ≈ 3.140625.
  const std::string data = std::string("\x00\x3c\x00\xc0\x01\x00", 6) + std::string("\x80\x3f\x49\x40", 4) +
                           std::string("\xff\xff\xff\xff", 4) + std::string("\x07", 1);
  const std::string h = R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[6,10]},)"
                        R"("i":{"dtype":"I32","shape":[1],"data_offsets":[10,14]},"u":{"dtype":"U8","shape":[1],"data_offsets":[14,15]}})";
  write_bytes(path("types.safetensors"), safetensors_bytes(h, data));
  const auto r = SafetensorsFile::read(path("types.safetensors"));
  EXPECT_EQ(r.get<float>("h"), (std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(r.get<float>("b"), (std::vector<float>{1.0f, 3.140625f}));
  EXPECT_EQ(r.get<int64_t>("i"), (std::vector<int64_t>{-1}));
  EXPECT_EQ(r.get<double>("u"), (std::vector<double>{7.0}));
}

TEST(Safetensors, RejectsHostileOrBrokenFiles) {
  const std::string ok = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  auto check = [&](const std::string& name, const std::string& bytes, const std::string& text) {
    write_bytes(path(name), bytes);
    EXPECT_ERROR(SafetensorsFile::read(path(name)), text);
    EXPECT_ERROR(SafetensorsFile::read(path(name)), path(name));
  };
  check("empty.safetensors", "", "too short");
  check("short.safetensors", "abc", "too short");
  check("truncated.safetensors", safetensors_bytes(ok, std::string(8, '\0')).substr(0, 20), "past the end");
  check("huge.safetensors", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "exceeds the 100 MiB limit");
  check("json.safetensors", safetensors_bytes("{not json", ""), "not valid JSON");
  check("dtype.safetensors", safetensors_bytes(R"({"x":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}})", "a"),
        "unsupported dtype \"Q7\"");
  check("outside.safetensors", safetensors_bytes(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234"),
        "outside the data section");
  check("lying.safetensors", safetensors_bytes(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, 'a')),
        "need 12 bytes but data_offsets span 8");
  check("overlap.safetensors",
        safetensors_bytes(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          std::string(12, 'a')),
        "overlap");
  check("absurd.safetensors",
        safetensors_bytes(R"({"x":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", std::string(8, 'a')),
        "absurdly large");
  check("negshape.safetensors", safetensors_bytes(R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", ""),
        "non-negative integer");
  EXPECT_ERROR(SafetensorsFile::read(path("does-not-exist.safetensors")), "cannot open file");
}

// A torch.save checkpoint (zip since PyTorch 1.6, a pickle before) or a JSON file where safetensors is read
// was reported as "header length 578712552184433488 exceeds the 100 MiB limit": the reader names the format
// and the exporter's function that converts a checkpoint.
TEST(Safetensors, ACheckpointOrJsonFileIsNamedWithHowToConvertIt) {
  // The first bytes torch.save writes: a zip local-file header (version 0, flags 0x0808), then the archive.
  const std::string zip = std::string("PK\x03\x04\x00\x00\x08\x08\x00\x00", 10) + std::string(200, 'z');
  // The legacy format: pickle protocol 2 (PROTO 0x80 0x02), then a LONG1 magic number.
  const std::string pickle = std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 14) +
                             std::string(100, 'p');
  const std::string how = "tools/export_torch.py: save_safetensors(path, model.state_dict()) for weights";
  const ModelFile m = small_model();
  Network<float> model(m.spec);
  // (Not a structured binding: clang 14 refuses to capture one in EXPECT_ERROR's lambda.)
  for (const auto& file :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"model.pt", zip, "this is a zip archive (what torch.save writes), not a safetensors file"},
           {"legacy.pt", pickle, "this is a Python pickle"},
           {"short.pt", zip.substr(0, 6), "this is a zip archive"}}) {
    const std::string &name = std::get<0>(file), &bytes = std::get<1>(file), &kind = std::get<2>(file);
    write_bytes(path(name), bytes);
    EXPECT_ERROR(SafetensorsFile::read(path(name)), path(name) + ": " + kind);
    EXPECT_ERROR(SafetensorsFile::read(path(name)), how);
    EXPECT_ERROR(load_parameters<float>(path(name), model), kind);
    EXPECT_ERROR(SafetensorsFile::parse(std::vector<uint8_t>(bytes.begin(), bytes.end()), "mem"), "mem: " + kind);
  }
  write_bytes(path("spec.json"), "  \n{\"input_shape\": [3], \"layers\": []}");
  EXPECT_ERROR(SafetensorsFile::read(path("spec.json")),
               "spec.json: this is a JSON text, not a safetensors file (a model spec is read with --model)");
  // As data: a checkpoint is named, and export_data is the way to write samples.
  EXPECT_ERROR(load_dataset<float>(path("model.pt"), {1, 4, 4}, LikelihoodKind::categorical, 3),
               "model.pt: this is a zip archive (what torch.save writes), not a data file: write the samples as "
               "safetensors with tools/export_torch.py's export_data(path, inputs, targets)");
  EXPECT_ERROR(count_samples(path("legacy.pt")), "this is a Python pickle");
  // Only a file that is not valid safetensors is sniffed: a valid file may begin with 0x80 0x02 (a header of
  // 640 bytes), and a broken one that begins otherwise keeps its own message.
  std::string header = R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  header.resize(640, ' ');
  write_bytes(path("starts_like_pickle.safetensors"), safetensors_bytes(header, std::string(4, '\0')));
  const std::string head = read_bytes(path("starts_like_pickle.safetensors")).substr(0, 2);
  ASSERT_EQ(head, std::string("\x80\x02", 2));
  EXPECT_EQ(SafetensorsFile::read(path("starts_like_pickle.safetensors")).get<float>("x"), std::vector<float>{0.0f});
  write_bytes(path("huge2.safetensors"), std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}");
  EXPECT_ERROR(SafetensorsFile::read(path("huge2.safetensors")), "exceeds the 100 MiB limit");
}

TEST(ModelSpec, ParsesPyTorchKeysAndRoundTrips) {
  const ModelFile m = small_model();
  ASSERT_EQ(m.spec.layers.size(), 5u);
  EXPECT_EQ(m.spec.layers[0].padding_h, 1);
  EXPECT_EQ(m.spec.layers[2].stride_h, 0);  // defaults to kernel_size when built
  const ModelFile again = parse_model_spec(model_spec_to_json(m), "again");
  EXPECT_EQ(model_spec_to_json(again), model_spec_to_json(m));
  Network<double> model(m.spec);
  EXPECT_EQ(model.output_size(), 3);
}

// conv1d's keys (integers, padding "same") and conv2d's and conv1d's groups, written back as read; groups that
// do not divide the channels are refused with a sentence naming them.
TEST(ModelSpec, Conv1dAndGroups) {
  const ModelFile m = parse_model_spec(R"({"input_shape": [4, 10], "layers": [
      {"type": "conv1d", "in_channels": 4, "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1,
       "groups": 4, "bias": false},
      {"type": "conv1d", "in_channels": 8, "out_channels": 6, "kernel_size": 5, "padding": "same", "groups": 2},
      {"type": "flatten"}, {"type": "linear", "in_features": 30, "out_features": 3}]})", "m.json");
  const LayerSpec& a = m.spec.layers[0];
  EXPECT_EQ(a.type, LayerType::conv1d);
  EXPECT_EQ(a.kernel_w, 3);
  EXPECT_EQ(a.stride_w, 2);
  EXPECT_EQ(a.padding_w, 1);
  EXPECT_EQ(a.groups, 4);
  EXPECT_FALSE(a.bias);
  EXPECT_TRUE(m.spec.layers[1].padding_same);
  Network<double> model(m.spec);
  EXPECT_EQ(model.layer(0).output_shape(), (Shape{8, 5}));
  EXPECT_EQ(model.layer(0).param_tensors()[0].shape, (Shape{8, 1, 3}));
  EXPECT_EQ(model.layer(1).param_tensors()[0].shape, (Shape{6, 4, 5}));
  const std::string written = model_spec_to_json(m);
  EXPECT_EQ(model_spec_to_json(parse_model_spec(written, "again")), written);
  EXPECT_NE(written.find("\"groups\": 4"), std::string::npos);
  const ModelFile g = parse_model_spec(R"({"input_shape": [4, 5, 5], "layers": [
      {"type": "conv2d", "in_channels": 4, "out_channels": 6, "kernel_size": 3, "groups": 2}]})", "m.json");
  EXPECT_EQ(g.spec.layers[0].groups, 2);
  EXPECT_EQ(Network<double>(g.spec).layer(0).param_tensors()[0].shape, (Shape{6, 2, 3, 3}));
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [4, 5, 5], "layers": [
      {"type": "conv2d", "in_channels": 4, "out_channels": 6, "kernel_size": 3, "groups": 4}]})", "m.json"),
               "m.json: layer 0 (conv2d): \"groups\" (4) must divide in_channels (4) and out_channels (6)");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [4, 10], "layers": [
      {"type": "conv1d", "in_channels": 4, "out_channels": 4, "kernel_size": [1, 3]}]})", "m.json"),
               "\"kernel_size\" must be an integer");
}

TEST(ModelSpec, RejectsBadSpecs) {
  EXPECT_ERROR(parse_model_spec("{\"input_shape\": [3], \"layers\": [", "m.json"), "m.json: malformed JSON");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [3], "layers": [{"type": "lstm"}]})", "m.json"),
               "m.json: layer 0: unknown layer type \"lstm\"");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [3], "likelihood": "poisson", "layers": []})", "m.json"),
               "unknown likelihood \"poisson\"");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [3], "layers": [{"type": "linear", "in_features": 3, "out_features": 2, "bais": true}]})", "m.json"),
               "unknown key \"bais\"");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [3], "layers": [], "optimizer": "sgd"})", "m.json"), "unknown key \"optimizer\"");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [3], "layers": [{"type": "linear", "in_features": 4, "out_features": 2}]})", "m.json"),
               "m.json: layer 0 (linear): linear expects input shape [4] but receives [3]");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [3], "layers": [{"type": "linear", "out_features": 2}]})", "m.json"),
               "missing key \"in_features\"");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [0], "layers": []})", "m.json"), "positive integers");
  EXPECT_ERROR(read_model_spec(path("missing.json")), "cannot open file");
}

TEST(FuzzRegressions, InputsTheFuzzersFoundAreRejectedCleanly) {
  // fuzz/corpus/model_spec/crash_huge_input_shape: the element count overflowed int64 (UBSan).
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [1099511627776, 1099511627776], "layers": []})", "m.json"),
               "positive integers below 2^31");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [2000000000, 2000000000], "layers": [{"type": "flatten"}]})", "m.json"),
               "more than 2^40 elements");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [100000, 1000, 1000], "layers": [
      {"type": "conv2d", "in_channels": 100000, "out_channels": 100000, "kernel_size": 1000}]})", "m.json"),
               "absurdly large");
  // fuzz/corpus/csv/crash_huge_label: a class index of 1e58 was cast to int64 (UBSan).
  EXPECT_ERROR(parse_csv<double>("1,099999999999999999999999999999999999999999999999999999999999\n", {1},
                                 LikelihoodKind::categorical, 2, "d.csv"),
               "out of range");
  EXPECT_ERROR(parse_csv<double>("1,nan\n", {1}, LikelihoodKind::categorical, 2, "d.csv"), "d.csv: line 1");
}

TEST(SizeOverflow, IdxDimensionsWhoseProductWrapsAreRefused) {
  // fuzz/corpus/idx/product_wraps_to_zero: 2²⁴ · 2¹⁶ · 2²⁴ = 2⁶⁴ is 0 in uint64_t, which equalled the empty
  // data section of this 16-byte file, so the file was accepted as 16.7 million images of 2¹⁶ × 2²⁴ pixels.
  const std::string wraps = idx_bytes({1u << 24, 1u << 16, 1u << 24}, "");
  ASSERT_EQ(wraps.size(), 16u);
  EXPECT_ERROR(parse_idx(std::vector<uint8_t>(wraps.begin(), wraps.end()), 3, "i.idx", nullptr),
               "i.idx: IDX dimensions 16777216 x 65536 x 16777216 are absurdly large");
  // The same through load_dataset, as the command line reads a directory.
  const std::string dir = path("idx_wraps");
  mkdir(dir.c_str(), 0755);
  write_bytes(dir + "/train-images-idx3-ubyte", wraps);
  write_bytes(dir + "/train-labels-idx1-ubyte", idx_bytes({1u << 24}, ""));
  EXPECT_ERROR(load_dataset<double>(dir, {1, 65536, 16777216}, LikelihoodKind::categorical, 2),
               "train-images-idx3-ubyte: IDX dimensions 16777216 x 65536 x 16777216 are absurdly large");
  // Two products that stay below 2⁶⁴ but lie about the data are refused by the size comparison.
  const std::string lies = idx_bytes({1u << 20, 1u << 20, 1u << 10}, "abcd");
  EXPECT_ERROR(parse_idx(std::vector<uint8_t>(lies.begin(), lies.end()), 3, "i.idx", nullptr),
               "absurdly large");
  const std::string small = idx_bytes({2, 3, 3}, std::string(17, 'x'));
  EXPECT_ERROR(parse_idx(std::vector<uint8_t>(small.begin(), small.end()), 3, "i.idx", nullptr),
               "IDX header promises 18 bytes of data but the file holds 17 (truncated?)");
}

TEST(SizeOverflow, SafetensorsShapeWithAZeroAndHugeDimensionsIsRefused) {
  // fuzz/corpus/safetensors/zero_times_huge: [0, 2⁴⁰, 2⁴⁰] holds no elements, so a product that starts at 0
  // never overflowed and parse accepted it; the sample shape [2⁴⁰, 2⁴⁰] then overflowed int64 in shape_size
  // (undefined behaviour) when the file was read as data.
  const std::string h =
      R"({"inputs":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]},)"
      R"("targets":{"dtype":"I64","shape":[0],"data_offsets":[0,0]}})";
  const std::string bytes = safetensors_bytes(h, "");
  EXPECT_ERROR(SafetensorsFile::parse(std::vector<uint8_t>(bytes.begin(), bytes.end()), "z.safetensors"),
               "z.safetensors: tensor \"inputs\": shape [0, 1099511627776, 1099511627776] is absurdly large");
  write_bytes(path("zero_huge.safetensors"), bytes);
  EXPECT_ERROR(load_dataset<float>(path("zero_huge.safetensors"), {4}, LikelihoodKind::categorical, 2),
               "shape [0, 1099511627776, 1099511627776] is absurdly large");
  // A zero-size tensor of moderate dimensions is still a valid file.
  const std::string ok =
      safetensors_bytes(R"({"e":{"dtype":"F32","shape":[0,3,4],"data_offsets":[0,0]}})", "");
  const SafetensorsFile f = SafetensorsFile::parse(std::vector<uint8_t>(ok.begin(), ok.end()), "ok");
  EXPECT_EQ(f.info("e").numel(), 0);
  EXPECT_TRUE(f.get<float>("e").empty());
}

TEST(Csv, ACellWithTextAfterTheNumberIsRejected) {
  // "3 foo" was read as 3 (strtod stops at the blank). Trailing blanks alone are fine.
  EXPECT_ERROR(parse_csv<double>("0.5,1\n0.25,3 foo\n", {1}, LikelihoodKind::categorical, 4, "d.csv"),
               "d.csv: line 2, column 2: \"3 foo\" is not a number");
  const Dataset<double> d = parse_csv<double>("0.5 ,1\n0.25,3  \n", {1}, LikelihoodKind::categorical, 4, "d.csv");
  ASSERT_EQ(d.labels.size(), 2u);
  EXPECT_EQ(d.labels[1], 3);
  EXPECT_EQ(d.inputs(0, 0), 0.5);
}

// docs/formats.md quotes the CSV reader's errors: each quoted message is what the reader says for a file
// that makes it, word for word, and every message tested here is quoted there.
TEST(Csv, ErrorMessagesAreTheOnesDocsQuote) {
  const std::map<std::string, std::string> files{
      {"d.csv: line 3, column 2: \"3 foo\" is not a number", "x0,x1,y\n0.5,1,2\n1,3 foo,0\n"},
      {"d.csv: line 3 has 4 values; expected 2 inputs and 1 target", "x0,x1,y\n0.5,1,2\n1,2,0,4\n"},
      {"d.csv: line 3, column 3: class index \"1.5\" is not an integer", "x0,x1,y\n0.5,1,2\n1,2,1.5\n"},
      {"d.csv: class label 7 of sample 1 is outside [0, 3)", "x0,x1,y\n0.5,1,2\n1,2,7\n"},
      {"d.csv: inputs of sample 1 contain NaN or Inf", "x0,x1,y\n0.5,1,2\nnan,2,1\n"},
      {"d.csv: holds no samples", "x0,x1,y\n"}};
  const std::string dir = path("csv_docs");
  mkdir(dir.c_str(), 0755);
  for (const auto& [message, text] : files) {
    write_bytes(dir + "/d.csv", text);
    try {
      load_dataset<double>(dir + "/d.csv", {2}, LikelihoodKind::categorical, 3);
      ADD_FAILURE() << "no error for " << text;
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(e.what(), dir + "/" + message);
    }
  }
  write_bytes(dir + "/d.csv", "1,2,1e58\n");
  EXPECT_ERROR(load_dataset<double>(dir + "/d.csv", {2}, LikelihoodKind::categorical, 3),
               "d.csv: line 1, column 3: class index \"1e58\" is out of range");
  // The messages the CSV item of docs/formats.md quotes (`d.csv: …` in backquotes).
  std::ifstream in(std::string(NATGRAD_DOCS_DIR) + "/formats.md");
  ASSERT_TRUE(in) << NATGRAD_DOCS_DIR << "/formats.md";
  const std::string docs((std::istreambuf_iterator<char>(in)), {});
  const std::size_t begin = docs.find("- **CSV**");
  ASSERT_NE(begin, std::string::npos);
  const std::size_t end = docs.find("\n\n", begin);
  std::set<std::string> quoted;
  for (std::size_t at = docs.find("`d.csv: ", begin); at < end; at = docs.find("`d.csv: ", at + 1))
    quoted.insert(docs.substr(at + 1, docs.find('`', at + 1) - at - 1));
  std::set<std::string> tested;
  for (const auto& f : files) tested.insert(f.first);
  EXPECT_EQ(quoted, tested);
}

TEST(ModelSpec, LayerNamesAreTheStateDictPrefixes) {
  // nn.Sequential(OrderedDict(fc1=Linear, act=Tanh, out=Linear)) names its parameters fc1.weight, …
  const ModelFile m = parse_model_spec(R"({"input_shape": [3], "layers": [
      {"type": "linear", "in_features": 3, "out_features": 4, "name": "fc1"}, {"type": "tanh", "name": "act"},
      {"type": "linear", "in_features": 4, "out_features": 2, "bias": false}]})", "m.json");
  Network<float> model(m.spec);
  std::vector<std::string> names;
  for (const NamedParam& p : model.named_params()) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"fc1.weight", "fc1.bias", "2.weight"}));
  EXPECT_EQ(parse_model_spec(model_spec_to_json(m), "again").spec.layers[0].name, "fc1");
  // A nested module's path has dots (layer1.0.conv1); a name is also the node id unless "id" is given.
  EXPECT_NO_THROW(parse_model_spec(R"({"input_shape": [3], "layers": [{"type": "tanh", "name": "a.b"}]})", "m.json"));
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [3], "layers": [{"type": "tanh", "name": ""}]})", "m.json"),
               "\"name\" must be a non-empty string");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [3], "layers": [{"type": "tanh", "name": "x"},
      {"type": "tanh", "name": "x"}]})", "m.json"), "layer 1 \"x\" (tanh): the id \"x\" is already used by layer 0");
  EXPECT_ERROR(parse_model_spec(R"({"input_shape": [3], "layers": [{"type": "tanh"}, {"type": "tanh", "name": "0"}]})",
                                "m.json"), "already used by layer 0");
}

TEST(ModelSpec, FormatVersion) {
  EXPECT_NO_THROW(parse_model_spec(R"({"format_version": 1, "input_shape": [3], "layers": []})", "m.json"));
  EXPECT_NO_THROW(parse_model_spec(R"({"format_version": 2, "input_shape": [3], "layers": []})", "m.json"));
  EXPECT_ERROR(parse_model_spec(R"({"format_version": 3, "input_shape": [3], "layers": [], "graph": {}})", "m.json"),
               "m.json: written by a newer natgrad (format_version 3; this build reads up to 2)");
  EXPECT_ERROR(parse_model_spec(R"({"format_version": "x", "input_shape": [3], "layers": []})", "m.json"),
               "\"format_version\" must be a positive integer");
  ModelFile m;
  m.spec.input_shape = {3};
  EXPECT_NE(model_spec_to_json(m).find("\"format_version\": 2"), std::string::npos);
}

TEST(Parameters, RoundTripAndMismatches) {
  const ModelFile m = small_model();
  Network<float> model(m.spec);
  const Vec<float> theta = init_parameters(model, 3);
  save_parameters(path("w.safetensors"), model, theta, DType::F32);
  EXPECT_EQ(load_parameters<float>(path("w.safetensors"), model), theta);
  // The file has PyTorch's names and shapes.
  const auto f = SafetensorsFile::read(path("w.safetensors"));
  EXPECT_EQ(f.names(), (std::vector<std::string>{"0.weight", "0.bias", "4.weight", "4.bias"}));
  EXPECT_EQ(f.info("0.weight").shape, (std::vector<int64_t>{2, 1, 3, 3}));

  const std::vector<float> w(18, 0.5f), b(2, 0.1f), lw(24, 0.2f), lb(3, 0.f), bad(5, 1.f);
  std::vector<float> nan = lw;
  nan[7] = std::nanf("");
  const std::vector<int64_t> ints(2, 1);
  auto write = [&](const std::string& name, std::vector<TensorView> t) {
    write_safetensors(path(name), t);
    return path(name);
  };
  EXPECT_ERROR(load_parameters<float>(write("miss.safetensors", {{"0.weight", DType::F32, {2, 1, 3, 3}, w.data()}}), model),
               "missing tensor \"0.bias\"");
  EXPECT_ERROR(load_parameters<float>(path("miss.safetensors"), model), "(the file holds: 0.weight)");
  EXPECT_ERROR(load_parameters<float>(write("shape.safetensors", {{"0.weight", DType::F32, {2, 9}, w.data()},
                                                                  {"0.bias", DType::F32, {2}, b.data()},
                                                                  {"4.weight", DType::F32, {3, 8}, lw.data()},
                                                                  {"4.bias", DType::F32, {3}, lb.data()}}),
                                      model),
               "tensor \"0.weight\" has shape [2, 9] but the model expects [2, 1, 3, 3]");
  EXPECT_ERROR(load_parameters<float>(write("nan.safetensors", {{"0.weight", DType::F32, {2, 1, 3, 3}, w.data()},
                                                                {"0.bias", DType::F32, {2}, b.data()},
                                                                {"4.weight", DType::F32, {3, 8}, nan.data()},
                                                                {"4.bias", DType::F32, {3}, lb.data()}}),
                                      model),
               "tensor \"4.weight\" has a non-finite value");
  EXPECT_ERROR(load_parameters<float>(write("extra.safetensors", {{"0.weight", DType::F32, {2, 1, 3, 3}, w.data()},
                                                                  {"0.bias", DType::F32, {2}, b.data()},
                                                                  {"4.weight", DType::F32, {3, 8}, lw.data()},
                                                                  {"4.bias", DType::F32, {3}, lb.data()},
                                                                  {"1.running_mean", DType::F32, {5}, bad.data()}}),
                                      model),
               "unexpected tensor \"1.running_mean\"");
  EXPECT_ERROR(load_parameters<float>(write("int.safetensors", {{"0.weight", DType::F32, {2, 1, 3, 3}, w.data()},
                                                                {"0.bias", DType::I64, {2}, ints.data()}}),
                                      model),
               "has dtype I64");
}

// train --save's file: the parameters, then the buffers (batch norm's running statistics, set away from their
// defaults), under their state_dict names; --weights reads both back bit for bit.
template <typename Scalar>
void state_dict_round_trips(DType dtype) {
  Network<Scalar> model(resnet_spec(3)), fresh(resnet_spec(3));
  ASSERT_FALSE(model.named_buffers().empty());
  for (std::size_t k = 0; k < model.named_buffers().size(); ++k) {
    std::vector<Scalar> v(static_cast<std::size_t>(shape_size(model.named_buffers()[k].shape)));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = Scalar(0.3) + Scalar(k) + Scalar(0.1) * Scalar(i);
    model.set_buffer(k, v.data());
  }
  const Vec<Scalar> theta = init_parameters(model, 5);
  const std::string file = path(dtype == DType::F32 ? "sd32.safetensors" : "sd64.safetensors");
  save_state_dict(file, model, theta, dtype);
  std::vector<std::string> names;
  for (const NamedParam& q : model.named_params()) names.push_back(q.name);
  for (const NamedBuffer& b : model.named_buffers()) names.push_back(b.name);
  EXPECT_EQ(SafetensorsFile::read(file).names(), names);
  EXPECT_TRUE(load_parameters<Scalar>(file, fresh) == theta);
  load_buffers<Scalar>(file, fresh);
  for (std::size_t k = 0; k < model.named_buffers().size(); ++k) EXPECT_EQ(fresh.buffer(k), model.buffer(k)) << k;
  EXPECT_NE(Network<Scalar>(resnet_spec(3)).buffer(0), model.buffer(0));  // (not a comparison of defaults)
}

TEST(Parameters, AStateDictHoldsTheBuffersAndReadsBack) {
  state_dict_round_trips<float>(DType::F32);
  state_dict_round_trips<double>(DType::F64);
}

TEST(Parameters, PyTorchLayoutFileRoundTripsBitForBit) {
  // A file laid out as torch / safetensors write a state_dict: __metadata__ {"format": "pt"}, tensors in
  // state_dict order, F32 little-endian. natgrad reads it and writes it back with identical tensor bytes.
  const ModelFile m = small_model();
  Network<float> model(m.spec);
  std::string data, header = R"({"__metadata__":{"format":"pt"})";
  std::size_t off = 0;
  const CounterRng rng(1, 2);
  for (const NamedParam& np : model.named_params()) {
    std::string shape;
    for (Index d : np.shape) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    header += ",\"" + np.name + R"(":{"dtype":"F32","shape":[)" + shape + "],\"data_offsets\":[" + std::to_string(off) +
              "," + std::to_string(off + 4 * np.size) + "]}";
    for (Index k = 0; k < np.size; ++k) {
      const float v = float(rng.normal(uint64_t(off + 4 * k)));
      data.append(reinterpret_cast<const char*>(&v), 4);
    }
    off += 4 * std::size_t(np.size);
  }
  header += "}";
  write_bytes(path("torch.safetensors"), safetensors_bytes(header, data));
  const Vec<float> theta = load_parameters<float>(path("torch.safetensors"), model);
  save_parameters(path("torch_again.safetensors"), model, theta, DType::F32);
  const auto a = SafetensorsFile::read(path("torch.safetensors")), b = SafetensorsFile::read(path("torch_again.safetensors"));
  EXPECT_EQ(a.names(), b.names());
  for (const std::string& name : a.names()) {
    EXPECT_EQ(a.info(name).shape, b.info(name).shape);
    const std::vector<float> x = a.get<float>(name), y = b.get<float>(name);
    EXPECT_EQ(0, std::memcmp(x.data(), y.data(), 4 * x.size())) << name;
  }
}

namespace {
void write_idx(const std::string& p, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data, bool gz) {
  const std::string s = idx_bytes(dims, std::string(data.begin(), data.end()));
  if (!gz) return write_bytes(p, s);
  gzFile f = gzopen(p.c_str(), "wb");
  gzwrite(f, s.data(), unsigned(s.size()));
  gzclose(f);
}
}  // namespace

TEST(Datasets, IdxGzipAndPlainWithScaling) {
  for (bool gz : {true, false}) {
    const std::string dir = path(gz ? "idx_gz" : "idx_plain");
    mkdir(dir.c_str(), 0755);
    const std::string ext = gz ? ".gz" : "";
    std::vector<uint8_t> px(3 * 16);
    for (std::size_t k = 0; k < px.size(); ++k) px[k] = uint8_t(k * 5);
    write_idx(dir + "/train-images-idx3-ubyte" + ext, {3, 4, 4}, px, gz);
    write_idx(dir + "/train-labels-idx1-ubyte" + ext, {3}, {2, 0, 1}, gz);
    const auto d = load_dataset<double>(dir, {1, 4, 4}, LikelihoodKind::categorical, 3);
    ASSERT_EQ(d.size(), 3);
    EXPECT_EQ(d.labels, (std::vector<int64_t>{2, 0, 1}));
    EXPECT_DOUBLE_EQ(d.inputs(5, 1), (16 + 5) * 5 / 255.0);
    EXPECT_EQ(load_dataset<double>(dir, {1, 4, 4}, LikelihoodKind::categorical, 3, Split::train, 2).size(), 2);
    EXPECT_ERROR(load_dataset<double>(dir, {1, 4, 4}, LikelihoodKind::categorical, 3, Split::train, 4),
                 "batch 4 exceeds the 3 samples");
    EXPECT_ERROR(load_dataset<double>(dir, {1, 4, 4}, LikelihoodKind::categorical, 2), "class label 2 of sample 0 is outside [0, 2)");
    EXPECT_ERROR(load_dataset<double>(dir, {1, 5, 5}, LikelihoodKind::categorical, 3), "do not match the model's input_shape");
    EXPECT_ERROR(load_dataset<double>(dir, {1, 4, 4}, LikelihoodKind::categorical, 3, Split::test), "missing t10k-images-idx3-ubyte");
    write_idx(dir + "/train-labels-idx1-ubyte" + ext, {2}, {0, 1}, gz);
    EXPECT_ERROR(load_dataset<double>(dir, {1, 4, 4}, LikelihoodKind::categorical, 3), "2 labels for 3 images");
    write_idx(dir + "/train-images-idx3-ubyte" + ext, {3, 4, 4}, std::vector<uint8_t>(20), gz);
    EXPECT_ERROR(load_dataset<double>(dir, {1, 4, 4}, LikelihoodKind::categorical, 3), "truncated?");
  }
}

// Files of several of the reader's 64 KiB pieces (Fashion-MNIST's are 735 of them): every pixel of the whole
// read and of a share in the middle against the pattern written, plain and gzip. (A reader that kept only its
// first piece left the default problem's samples 84 onward at zero.)
TEST(Datasets, IdxFilesOfManyPiecesReadEveryPixel) {
  const Index n = 300, h = 28, w = 28, d = h * w;  // 235,200 bytes: four pieces
  auto pixel = [](Index s, Index k) { return uint8_t((s * 131 + k * 7 + s * k) % 251); };
  std::vector<uint8_t> px(static_cast<std::size_t>(n * d)), labels(static_cast<std::size_t>(n));
  for (Index s = 0; s < n; ++s) {
    labels[std::size_t(s)] = uint8_t(s % 10);
    for (Index k = 0; k < d; ++k) px[std::size_t(s * d + k)] = pixel(s, k);
  }
  for (bool gz : {true, false}) {
    SCOPED_TRACE(gz ? "gzip" : "plain");
    const std::string dir = path(gz ? "idx_many_gz" : "idx_many_plain");
    mkdir(dir.c_str(), 0755);
    const std::string ext = gz ? ".gz" : "";
    write_idx(dir + "/train-images-idx3-ubyte" + ext, {uint32_t(n), uint32_t(h), uint32_t(w)}, px, gz);
    write_idx(dir + "/train-labels-idx1-ubyte" + ext, {uint32_t(n)}, labels, gz);
    const auto all = load_dataset<double>(dir, {1, h, w}, LikelihoodKind::categorical, 10);
    ASSERT_EQ(all.size(), n);
    Index wrong = 0;
    for (Index s = 0; s < n; ++s)
      for (Index k = 0; k < d; ++k) wrong += all.inputs(k, s) != pixel(s, k) / 255.0;
    EXPECT_EQ(wrong, 0);
    // Samples [170, 290): a share that starts inside the third piece and ends inside the fifth.
    const auto share = load_dataset<double>(dir, {1, h, w}, LikelihoodKind::categorical, 10, Split::train, 120, 1, 0, 170);
    ASSERT_EQ(share.size(), 120);
    wrong = 0;
    for (Index s = 0; s < 120; ++s) {
      wrong += share.labels[std::size_t(s)] != (170 + s) % 10;
      for (Index k = 0; k < d; ++k) wrong += share.inputs(k, s) != pixel(170 + s, k) / 255.0;
    }
    EXPECT_EQ(wrong, 0);
  }
}

TEST(Datasets, CorruptGzipIdxIsAnErrorNamingTheFile) {
  const std::string dir = path("idx_corrupt");
  mkdir(dir.c_str(), 0755);
  std::vector<uint8_t> px(3 * 16, 7);
  write_idx(dir + "/train-images-idx3-ubyte.gz", {3, 4, 4}, px, true);
  write_idx(dir + "/train-labels-idx1-ubyte.gz", {3}, {2, 0, 1}, true);
  // Flip bytes in the middle of the compressed stream and cut its end: inflate fails or comes up short.
  std::string bytes = read_bytes(dir + "/train-images-idx3-ubyte.gz");
  for (std::size_t k = 12; k < bytes.size() / 2 + 12 && k < bytes.size(); ++k) bytes[k] = char(bytes[k] ^ 0x5a);
  write_bytes(dir + "/train-images-idx3-ubyte.gz", bytes.substr(0, bytes.size() - 6));
  EXPECT_ERROR(load_dataset<double>(dir, {1, 4, 4}, LikelihoodKind::categorical, 3),
               "train-images-idx3-ubyte.gz: corrupt or truncated gzip data");
}

TEST(Datasets, GaussianAndBernoulliTargetsThroughTheLoaders) {
  const Shape shape{3};
  std::vector<float> x(4 * 3);
  for (std::size_t k = 0; k < x.size(); ++k) x[k] = 0.1f * float(k);
  const std::vector<float> yg{0.5f, -1.0f, 2.0f, 0.0f, 3.0f, -4.0f, 1.5f, 1.0f};  // [4, 2]
  write_safetensors(path("g.safetensors"), {{"inputs", DType::F32, {4, 3}, x.data()}, {"targets", DType::F32, {4, 2}, yg.data()}});
  const auto g = load_dataset<double>(path("g.safetensors"), shape, LikelihoodKind::gaussian, 2);
  ASSERT_EQ(g.targets.rows(), 2);
  ASSERT_EQ(g.targets.cols(), 4);
  EXPECT_EQ(g.targets(1, 2), -4.0);  // sample 2, output 1
  EXPECT_ERROR(load_dataset<double>(path("g.safetensors"), shape, LikelihoodKind::gaussian, 3), "targets");
  const std::vector<double> yb{1, 0, 0, 1, 1, 1, 0, 0}, ybad{1, 0, 0, 1.5, 1, 1, 0, 0};
  write_safetensors(path("b.safetensors"), {{"inputs", DType::F32, {4, 3}, x.data()}, {"targets", DType::F64, {4, 2}, yb.data()}});
  const auto b = load_dataset<float>(path("b.safetensors"), shape, LikelihoodKind::bernoulli, 2);
  EXPECT_EQ(b.targets(1, 1), 1.0f);
  write_safetensors(path("bbad.safetensors"), {{"inputs", DType::F32, {4, 3}, x.data()}, {"targets", DType::F64, {4, 2}, ybad.data()}});
  EXPECT_ERROR(load_dataset<float>(path("bbad.safetensors"), shape, LikelihoodKind::bernoulli, 2), "bernoulli targets must lie in [0, 1]");
  // CSV: the last C columns are the targets.
  write_bytes(path("g.csv"), "0.1,0.2,0.3,1.5,-2\n0.4,0.5,0.6,0,7\n");
  const auto c = load_dataset<double>(path("g.csv"), shape, LikelihoodKind::gaussian, 2);
  ASSERT_EQ(c.size(), 2);
  EXPECT_EQ(c.targets(1, 0), -2.0);
  EXPECT_EQ(c.targets(1, 1), 7.0);
  EXPECT_EQ(c.inputs(2, 1), 0.6);
}

TEST(Datasets, SafetensorsAndCsv) {
  const ModelFile m = small_model();
  Dataset<float> d;
  d.inputs = random_mat<float>(16, 5, 1);
  d.labels = {0, 1, 2, 1, 0};
  save_dataset(path("d.safetensors"), d, m.spec.input_shape);
  const auto back = load_dataset<float>(path("d.safetensors"), m.spec.input_shape, LikelihoodKind::categorical, 3);
  EXPECT_EQ(back.inputs, d.inputs);
  EXPECT_EQ(back.labels, d.labels);

  std::vector<float> x(5 * 16, 0.5f);
  x[17] = std::nanf("");
  const std::vector<int64_t> y{0, 1, 2, 1, 0}, yb{0, 1, 9, 1, 0};
  write_safetensors(path("nan.safetensors"), {{"inputs", DType::F32, {5, 1, 4, 4}, x.data()}, {"targets", DType::I64, {5}, y.data()}});
  EXPECT_ERROR(load_dataset<float>(path("nan.safetensors"), m.spec.input_shape, LikelihoodKind::categorical, 3),
               "inputs of sample 1 contain NaN or Inf");
  x[17] = 0;
  write_safetensors(path("range.safetensors"), {{"inputs", DType::F32, {5, 1, 4, 4}, x.data()}, {"targets", DType::I64, {5}, yb.data()}});
  EXPECT_ERROR(load_dataset<float>(path("range.safetensors"), m.spec.input_shape, LikelihoodKind::categorical, 3),
               "class label 9 of sample 2 is outside [0, 3)");
  write_safetensors(path("notargets.safetensors"), {{"inputs", DType::F32, {5, 1, 4, 4}, x.data()}});
  EXPECT_ERROR(load_dataset<float>(path("notargets.safetensors"), m.spec.input_shape, LikelihoodKind::categorical, 3),
               "missing tensor \"targets\"");
  write_safetensors(path("shape.safetensors"), {{"inputs", DType::F32, {5, 2, 8}, x.data()}, {"targets", DType::I64, {5}, y.data()}});
  EXPECT_ERROR(load_dataset<float>(path("shape.safetensors"), m.spec.input_shape, LikelihoodKind::categorical, 3),
               "samples have shape [2, 8] but the model's input_shape is [1, 4, 4]");
  write_safetensors(path("ftargets.safetensors"), {{"inputs", DType::F32, {5, 1, 4, 4}, x.data()}, {"targets", DType::F32, {5}, x.data()}});
  EXPECT_ERROR(load_dataset<float>(path("ftargets.safetensors"), m.spec.input_shape, LikelihoodKind::categorical, 3),
               "needs I64 class indices");

  write_bytes(path("d.csv"), "a,b,c,label\n0.5,1,2,1\n-1,0,3.5,0\n");
  const auto c = load_dataset<double>(path("d.csv"), {3}, LikelihoodKind::categorical, 2);
  ASSERT_EQ(c.size(), 2);
  EXPECT_EQ(c.inputs(2, 1), 3.5);
  EXPECT_EQ(c.labels, (std::vector<int64_t>{1, 0}));
  write_bytes(path("g.csv"), "1,2,0.5,0.25\n3,4,1,2\n");
  const auto g = load_dataset<double>(path("g.csv"), {2}, LikelihoodKind::gaussian, 2);
  EXPECT_EQ(g.targets(1, 1), 2.0);
  write_bytes(path("bad.csv"), "1,2,1\n1,x,0\n");
  EXPECT_ERROR(load_dataset<double>(path("bad.csv"), {2}, LikelihoodKind::categorical, 2), "line 2, column 2: \"x\" is not a number");
  write_bytes(path("short.csv"), "1,2,1\n1,0\n");
  EXPECT_ERROR(load_dataset<double>(path("short.csv"), {2}, LikelihoodKind::categorical, 2), "line 2 has 2 values");
  write_bytes(path("empty.csv"), "");
  EXPECT_ERROR(load_dataset<double>(path("empty.csv"), {2}, LikelihoodKind::categorical, 2), "holds no samples");
  EXPECT_ERROR(load_dataset<double>(path("nothing.bin"), {2}, LikelihoodKind::categorical, 2), "no such file");
  write_bytes(path("d.bin"), "x");
  EXPECT_ERROR(load_dataset<double>(path("d.bin"), {2}, LikelihoodKind::categorical, 2), "unknown data format");
}

// A state_dict holds a tied tensor under each module's name: the alias is accepted when it equals the
// tensor the model stores, refused naming both when it differs, and outputs hold the tensor once.
TEST(Parameters, TiedAliasIsAcceptedOnlyWhenEqual) {
  ModelSpec spec;
  spec.input_shape = {3};
  LayerSpec tok = LayerSpec::embedding(5, 2);
  tok.name = "tok";
  LayerSpec head = LayerSpec::linear(2, 5, false);
  head.name = "head";
  head.param_names = {"tok.weight"};
  spec.layers = {tok, head};
  Network<float> model(spec);
  ASSERT_EQ(model.num_params(), 10);
  const Vec<float> theta = init_parameters(model, 4);
  Vec<float> other = theta;
  other[3] += 1;
  const std::vector<int64_t> shape{5, 2};
  write_safetensors(path("tied.safetensors"), {{"tok.weight", DType::F32, shape, theta.data()},
                                               {"head.weight", DType::F32, shape, theta.data()}});
  EXPECT_EQ(load_parameters<float>(path("tied.safetensors"), model), theta);
  write_safetensors(path("tied_bad.safetensors"), {{"tok.weight", DType::F32, shape, theta.data()},
                                                   {"head.weight", DType::F32, shape, other.data()}});
  EXPECT_ERROR(load_parameters<float>(path("tied_bad.safetensors"), model),
               "tensor \"head.weight\" is tied to \"tok.weight\" in the model but holds different values");
  save_parameters(path("tied_out.safetensors"), model, theta, DType::F32);
  EXPECT_EQ(SafetensorsFile::read(path("tied_out.safetensors")).names(), std::vector<std::string>{"tok.weight"});
  // A state_dict (train --save) holds it under both names, as PyTorch's load_state_dict needs, and reads back.
  save_state_dict(path("tied_sd.safetensors"), model, theta, DType::F32);
  const SafetensorsFile sd = SafetensorsFile::read(path("tied_sd.safetensors"));
  EXPECT_EQ(sd.names(), (std::vector<std::string>{"tok.weight", "head.weight"}));
  EXPECT_EQ(sd.get<float>("head.weight"), std::vector<float>(theta.data(), theta.data() + 10));
  EXPECT_EQ(load_parameters<float>(path("tied_sd.safetensors"), model), theta);
}

// The exporter's "origin" (where a node comes from in the PyTorch model) is kept by the reader, written back,
// and carried by each of the three nodes a multihead_attention node becomes; any other type is refused.
TEST(ModelSpec, KeepsEachNodesPyTorchOrigin) {
  const ModelFile m = parse_model_spec(R"({"input_shape": [3, 4], "layers": [
      {"type": "multihead_attention", "name": "attn", "embed_dim": 4, "num_heads": 2, "origin": "attn (nn.MultiheadAttention) at gpt.py:7"},
      {"type": "relu", "origin": "F.relu at gpt.py:8"}, {"type": "linear", "in_features": 4, "out_features": 2}]})",
                                       "o.json");
  ASSERT_EQ(m.spec.layers.size(), 3u);
  EXPECT_EQ(m.spec.layers[0].origin, "attn (nn.MultiheadAttention) at gpt.py:7");
  EXPECT_EQ(m.spec.layers[1].origin, "F.relu at gpt.py:8");
  EXPECT_EQ(m.spec.layers[2].origin, "");
  const std::string written = model_spec_to_json(m);
  EXPECT_NE(written.find("\"origin\": \"F.relu at gpt.py:8\""), std::string::npos) << written;
  EXPECT_EQ(parse_model_spec(written, "again").spec.layers[1].origin, "F.relu at gpt.py:8");
  Network<double> model(m.spec);
  ASSERT_EQ(model.num_layers(), 5u);  // in_proj, attention, out_proj, relu, linear
  for (std::size_t l = 0; l < 3; ++l)
    EXPECT_EQ(model.layer_spec(l).origin, "attn (nn.MultiheadAttention) at gpt.py:7") << l;
  EXPECT_ERROR(
      parse_model_spec(R"({"input_shape": [3], "layers": [{"type": "relu", "origin": 3}]})", "o.json"),
      "\"origin\" must be a non-empty string");
}
