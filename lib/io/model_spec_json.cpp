#include <natgrad/io/model_spec_json.h>
#include <natgrad/model/sequential.h>

#include "core/fail.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

namespace natgrad {

namespace {
using detail::fail;
using json = nlohmann::json;

constexpr Index kMaxInt = Index(1) << 31;

Index get_int(const json& j, const char* key, const std::string& where, const std::string& label) {
  const json& v = j.at(key);
  if (!v.is_number_integer()) fail(label, where + ": \"" + key + "\" must be an integer");
  const Index x = v.get<Index>();
  if (x >= kMaxInt || x <= -kMaxInt) fail(label, where + ": \"" + key + "\" = " + std::to_string(x) + " is out of range");
  return x;
}

// kernel_size / stride / padding: an integer or a pair [h, w], as PyTorch accepts.
void get_pair(const json& j, const char* key, const std::string& where, const std::string& label, Index& h, Index& w) {
  const json& v = j.at(key);
  if (v.is_number_integer()) {
    h = w = v.get<Index>();
  } else if (v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer()) {
    h = v[0].get<Index>();
    w = v[1].get<Index>();
  } else {
    fail(label, where + ": \"" + key + "\" must be an integer or a pair of integers");
  }
  if (h >= kMaxInt || w >= kMaxInt || h <= -kMaxInt || w <= -kMaxInt)
    fail(label, where + ": \"" + key + "\" is out of range");
}
}  // namespace

ModelFile parse_model_spec(const std::string& text, const std::string& label) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(label, std::string("malformed JSON: ") + e.what());
  }
  if (!j.is_object()) fail(label, "the model spec must be a JSON object");
  // A newer writer may add keys this build does not know: say that, not only "unknown key".
  if (j.contains("format_version")) {
    const json& v = j["format_version"];
    if (!v.is_number_integer() || v.get<long long>() < 1) fail(label, "\"format_version\" must be a positive integer");
    if (v.get<long long>() > kModelFormatVersion)
      fail(label, "written by a newer natgrad (format_version " + std::to_string(v.get<long long>()) +
                      "; this build reads up to " + std::to_string(kModelFormatVersion) + ")");
  }
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.key() != "format_version" && it.key() != "input_shape" && it.key() != "likelihood" && it.key() != "layers")
      fail(label, "unknown key \"" + it.key() + "\" (expected format_version, input_shape, likelihood, layers)");
  ModelFile m;
  if (!j.contains("input_shape") || !j["input_shape"].is_array() || j["input_shape"].empty())
    fail(label, "\"input_shape\" must be a non-empty array of positive integers");
  for (const auto& d : j["input_shape"]) {
    if (!d.is_number_integer() || d.get<Index>() <= 0 || d.get<Index>() >= kMaxInt)
      fail(label, "\"input_shape\" must be a non-empty array of positive integers below 2^31");
    m.spec.input_shape.push_back(d.get<Index>());
  }
  if (j.contains("likelihood")) {
    if (!j["likelihood"].is_string()) fail(label, "\"likelihood\" must be a string");
    try {
      m.likelihood = likelihood_from_string(j["likelihood"].get<std::string>());
    } catch (const std::invalid_argument& e) {
      fail(label, e.what());
    }
  }
  if (!j.contains("layers") || !j["layers"].is_array()) fail(label, "\"layers\" must be an array");
  for (std::size_t i = 0; i < j["layers"].size(); ++i) {
    const json& l = j["layers"][i];
    const std::string where = "layer " + std::to_string(i);
    if (!l.is_object() || !l.contains("type") || !l["type"].is_string())
      fail(label, where + ": needs a \"type\" string");
    LayerSpec s;
    try {
      s.type = layer_type_from_string(l["type"].get<std::string>());
    } catch (const std::invalid_argument& e) {
      fail(label, where + ": " + e.what());
    }
    std::set<std::string> allowed{"type", "name"}, required;
    if (l.contains("name")) {
      const json& nm = l["name"];
      if (!nm.is_string() || nm.get<std::string>().empty() || nm.get<std::string>().find('.') != std::string::npos)
        fail(label, where + ": \"name\" must be a non-empty string without dots (a module name)");
      s.name = nm.get<std::string>();
      for (std::size_t k = 0; k < m.spec.layers.size(); ++k)
        if ((m.spec.layers[k].name.empty() ? std::to_string(k) : m.spec.layers[k].name) == s.name)
          fail(label, where + ": the name \"" + s.name + "\" is already used by layer " + std::to_string(k));
    }
    switch (s.type) {
      case LayerType::linear:
        allowed.insert({"in_features", "out_features", "bias"});
        required = {"in_features", "out_features"};
        break;
      case LayerType::conv2d:
        allowed.insert({"in_channels", "out_channels", "kernel_size", "stride", "padding", "bias"});
        required = {"in_channels", "out_channels", "kernel_size"};
        break;
      case LayerType::leaky_relu:
        allowed.insert("negative_slope");
        break;
      case LayerType::maxpool2d:
      case LayerType::avgpool2d:
        allowed.insert({"kernel_size", "stride"});
        required = {"kernel_size"};
        break;
      default:
        break;
    }
    for (auto it = l.begin(); it != l.end(); ++it)
      if (!allowed.count(it.key())) fail(label, where + " (" + to_string(s.type) + "): unknown key \"" + it.key() + "\"");
    for (const auto& k : required)
      if (!l.contains(k)) fail(label, where + " (" + to_string(s.type) + "): missing key \"" + k + "\"");
    const std::string w = where + " (" + to_string(s.type) + ")";
    if (l.contains("bias")) {
      if (!l["bias"].is_boolean()) fail(label, w + ": \"bias\" must be true or false");
      s.bias = l["bias"].get<bool>();
    }
    switch (s.type) {
      case LayerType::linear:
        s.in_features = get_int(l, "in_features", w, label);
        s.out_features = get_int(l, "out_features", w, label);
        break;
      case LayerType::conv2d:
        s.in_channels = get_int(l, "in_channels", w, label);
        s.out_channels = get_int(l, "out_channels", w, label);
        get_pair(l, "kernel_size", w, label, s.kernel_h, s.kernel_w);
        if (l.contains("stride")) get_pair(l, "stride", w, label, s.stride_h, s.stride_w);
        if (l.contains("padding")) get_pair(l, "padding", w, label, s.padding_h, s.padding_w);
        break;
      case LayerType::leaky_relu:
        if (l.contains("negative_slope")) {
          if (!l["negative_slope"].is_number()) fail(label, w + ": \"negative_slope\" must be a number");
          s.negative_slope = l["negative_slope"].get<double>();
        }
        break;
      case LayerType::maxpool2d:
      case LayerType::avgpool2d:
        get_pair(l, "kernel_size", w, label, s.kernel_h, s.kernel_w);
        s.stride_h = s.stride_w = 0;  // PyTorch: stride defaults to kernel_size
        if (l.contains("stride") && !l["stride"].is_null()) get_pair(l, "stride", w, label, s.stride_h, s.stride_w);
        break;
      default:
        break;
    }
    m.spec.layers.push_back(s);
  }
  try {
    Sequential<double> check(m.spec);  // do the layers chain?
  } catch (const std::invalid_argument& e) {
    fail(label, e.what());
  }
  return m;
}

ModelFile read_model_spec(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path, std::string("cannot open file (") + std::strerror(errno) + ")");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_spec(ss.str(), path);
}

std::string model_spec_to_json(const ModelFile& m) {
  nlohmann::ordered_json j;
  j["format_version"] = kModelFormatVersion;
  j["input_shape"] = m.spec.input_shape;
  j["likelihood"] = to_string(m.likelihood);
  j["layers"] = nlohmann::ordered_json::array();
  for (const LayerSpec& s : m.spec.layers) {
    nlohmann::ordered_json l;
    l["type"] = to_string(s.type);
    if (!s.name.empty()) l["name"] = s.name;
    switch (s.type) {
      case LayerType::linear:
        l["in_features"] = s.in_features;
        l["out_features"] = s.out_features;
        l["bias"] = s.bias;
        break;
      case LayerType::conv2d:
        l["in_channels"] = s.in_channels;
        l["out_channels"] = s.out_channels;
        l["kernel_size"] = {s.kernel_h, s.kernel_w};
        l["stride"] = {s.stride_h, s.stride_w};
        l["padding"] = {s.padding_h, s.padding_w};
        l["bias"] = s.bias;
        break;
      case LayerType::leaky_relu:
        l["negative_slope"] = s.negative_slope;
        break;
      case LayerType::maxpool2d:
      case LayerType::avgpool2d:
        l["kernel_size"] = {s.kernel_h, s.kernel_w};
        if (s.stride_h > 0) l["stride"] = {s.stride_h, s.stride_w};
        break;
      default:
        break;
    }
    j["layers"].push_back(l);
  }
  return j.dump(1);
}

}  // namespace natgrad
