// The command-line tests' fixture: a temporary directory, running a binary with its stdout and stderr
// captured, and a small categorical CNN with its weights, a vector and 40 samples written there.
#pragma once

#include "test_helpers.h"

#include <natgrad/io/dataset_io.h>
#include <natgrad/io/model_spec_json.h>
#include <natgrad/io/parameters_io.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>

namespace natgrad {
namespace test {
namespace cli_fixture {
struct Result {
  int code;
  std::string out, err;
};

inline std::string dir() {
  static const std::string d = make_temp_dir("natgrad_cli");
  return d;
}
inline std::string p(const std::string& name) { return dir() + "/" + name; }
inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
inline bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

inline Result run(const std::string& args, const char* binary = NATGRAD_CLI) {
  const std::string cmd = std::string(binary) + " " + args + " --quiet > " + p("stdout") + " 2> " + p("stderr");
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(p("stdout")), slurp(p("stderr"))};
}

const char* kModel = R"({"input_shape": [1, 5, 5], "likelihood": "categorical", "layers": [
  {"type": "conv2d", "in_channels": 1, "out_channels": 3, "kernel_size": 3, "padding": 1},
  {"type": "tanh"}, {"type": "avgpool2d", "kernel_size": 2}, {"type": "flatten"},
  {"type": "linear", "in_features": 12, "out_features": 6}, {"type": "gelu"},
  {"type": "linear", "in_features": 6, "out_features": 4}]})";

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::ofstream(p("model.json")) << kModel;
    const ModelFile m = read_model_spec(p("model.json"));
    Network<float> model(m.spec);
    save_parameters(p("w.safetensors"), model, init_parameters(model, 4), DType::F32);
    save_parameters(p("v.safetensors"), model, Vec<float>(random_vec<float>(model.num_params(), 5)), DType::F32);
    Dataset<float> d = random_dataset(model, 40, LikelihoodKind::categorical, 6);
    save_dataset(p("d.safetensors"), d, m.spec.input_shape);
  }
  const std::string base = "--model " + p("model.json") + " --weights " + p("w.safetensors") + " --data " + p("d.safetensors");

  struct Loaded {
    ModelFile m;
    std::unique_ptr<Network<float>> model;
    Vec<float> theta;
    Dataset<float> data;
  };
  Loaded load() {
    Loaded l;
    l.m = read_model_spec(p("model.json"));
    l.model = std::make_unique<Network<float>>(l.m.spec);
    l.theta = load_parameters<float>(p("w.safetensors"), *l.model);
    l.data = load_dataset<float>(p("d.safetensors"), l.m.spec.input_shape, l.m.likelihood, l.model->output_size());
    return l;
  }
};

}  // namespace cli_fixture
}  // namespace test
}  // namespace natgrad
