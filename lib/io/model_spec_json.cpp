#include <natgrad/io/model_spec_json.h>
#include <natgrad/model/network.h>

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
  const std::set<std::string> top{"format_version", "input_shape", "likelihood", "layers", "output", "parameters"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!top.count(it.key()))
      fail(label, "unknown key \"" + it.key() + "\" (expected format_version, input_shape, likelihood, layers, output, "
                  "parameters)");
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
  if (j.contains("output")) {
    if (!j["output"].is_string() || j["output"].get<std::string>().empty())
      fail(label, "\"output\" must be a node id");
    m.spec.output = j["output"].get<std::string>();
  }
  if (j.contains("parameters")) {
    if (!j["parameters"].is_array()) fail(label, "\"parameters\" must be an array of parameter names");
    for (const auto& p : j["parameters"]) {
      if (!p.is_string()) fail(label, "\"parameters\" must be an array of parameter names");
      m.spec.parameter_order.push_back(p.get<std::string>());
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
    const std::string w = where + " (" + to_string(s.type) + ")";
    auto get_string = [&](const char* key, std::string& out) {
      if (!l.contains(key)) return;
      const json& v = l[key];
      if (!v.is_string() || v.get<std::string>().empty()) fail(label, w + ": \"" + key + "\" must be a non-empty string");
      out = v.get<std::string>();
    };
    auto get_bool = [&](const char* key, bool& out) {
      if (!l.contains(key)) return;
      if (!l[key].is_boolean()) fail(label, w + ": \"" + key + "\" must be true or false");
      out = l[key].get<bool>();
    };
    auto get_number = [&](const char* key, double& out) {
      if (!l.contains(key)) return;
      if (!l[key].is_number()) fail(label, w + ": \"" + key + "\" must be a number");
      out = l[key].get<double>();
    };
    auto get_shape = [&](const char* key, Shape& out) {
      const json& v = l.at(key);
      if (v.is_number_integer()) {
        out = {get_int(l, key, w, label)};
        return;
      }
      if (!v.is_array()) fail(label, w + ": \"" + key + "\" must be an integer or an array of integers");
      for (const auto& d : v) {
        if (!d.is_number_integer() || d.get<Index>() <= 0 || d.get<Index>() >= kMaxInt)
          fail(label, w + ": \"" + key + "\" must hold positive integers below 2^31");
        out.push_back(d.get<Index>());
      }
    };
    auto get_dims = [&](const char* key, std::vector<Index>& out) {  // dimension numbers, 0 allowed
      const json& v = l.at(key);
      if (v.is_number_integer()) {
        out = {get_int(l, key, w, label)};
      } else if (v.is_array()) {
        for (const auto& d : v) {
          if (!d.is_number_integer()) fail(label, w + ": \"" + key + "\" must be an integer or an array of integers");
          out.push_back(d.get<Index>());
        }
      } else {
        fail(label, w + ": \"" + key + "\" must be an integer or an array of integers");
      }
      for (Index d : out)
        if (d < 0 || d >= 64) fail(label, w + ": \"" + key + "\" holds " + std::to_string(d) + ", not a dimension (0 to 63)");
    };
    std::set<std::string> allowed{"type", "name", "id", "inputs", "parameter_names", "origin"}, required;
    get_string("name", s.name);
    get_string("id", s.id);
    get_string("origin", s.origin);
    if (l.contains("inputs")) {
      const json& v = l["inputs"];
      if (!v.is_array() || v.empty()) fail(label, w + ": \"inputs\" must be a non-empty array of node ids");
      for (const auto& x : v) {
        if (!x.is_string()) fail(label, w + ": \"inputs\" must be a non-empty array of node ids");
        s.inputs.push_back(x.get<std::string>());
      }
    }
    if (l.contains("parameter_names")) {
      const json& v = l["parameter_names"];
      if (!v.is_array() || v.empty()) fail(label, w + ": \"parameter_names\" must be a non-empty array of tensor names");
      for (const auto& x : v) {
        if (!x.is_string() || x.get<std::string>().empty())
          fail(label, w + ": \"parameter_names\" must be a non-empty array of tensor names");
        s.param_names.push_back(x.get<std::string>());
      }
    }
    switch (s.type) {
      case LayerType::linear:
        allowed.insert({"in_features", "out_features", "bias"});
        required = {"in_features", "out_features"};
        break;
      case LayerType::conv2d:
      case LayerType::conv1d:
        allowed.insert({"in_channels", "out_channels", "kernel_size", "stride", "padding", "bias", "groups"});
        required = {"in_channels", "out_channels", "kernel_size"};
        break;
      case LayerType::leaky_relu:
        allowed.insert("negative_slope");
        break;
      case LayerType::gelu:
        allowed.insert("approximate");
        break;
      case LayerType::maxpool2d:
        allowed.insert({"kernel_size", "stride", "padding"});
        required = {"kernel_size"};
        break;
      case LayerType::avgpool2d:
        allowed.insert({"kernel_size", "stride"});
        required = {"kernel_size"};
        break;
      case LayerType::add:
        allowed.insert({"parameter", "parameter_shape"});
        break;
      case LayerType::cat:
        allowed.insert("dim");
        break;
      case LayerType::layer_norm:
        allowed.insert({"normalized_shape", "eps", "elementwise_affine"});
        required = {"normalized_shape"};
        break;
      case LayerType::batch_norm:
        allowed.insert({"num_features", "eps", "affine", "training"});
        required = {"num_features"};
        break;
      case LayerType::group_norm:
        allowed.insert({"num_groups", "num_channels", "eps", "affine"});
        required = {"num_groups", "num_channels"};
        break;
      case LayerType::embedding:
        allowed.insert({"num_embeddings", "embedding_dim", "padding_idx"});
        required = {"num_embeddings", "embedding_dim"};
        break;
      case LayerType::global_avgpool:
        allowed.insert("keepdim");
        break;
      case LayerType::elu:
        allowed.insert("alpha");
        break;
      case LayerType::scalar_affine:
        allowed.insert({"scale", "shift"});
        break;
      case LayerType::reshape:
        allowed.insert("shape");
        required = {"shape"};
        break;
      case LayerType::permute:
        allowed.insert("dims");
        required = {"dims"};
        break;
      case LayerType::mean:
      case LayerType::sum:
        allowed.insert({"dim", "keepdim"});
        required = {"dim"};
        break;
      case LayerType::upsample:
        allowed.insert({"scale_factor", "mode"});
        required = {"scale_factor"};
        break;
      case LayerType::multihead_attention:
        allowed.insert({"embed_dim", "num_heads", "bias", "attn_mask", "attn_mask_dtype"});
        required = {"embed_dim", "num_heads"};
        break;
      case LayerType::attention:
        allowed.insert({"num_heads", "attn_mask", "attn_mask_dtype"});
        required = {"num_heads"};
        break;
      case LayerType::dropout:
        allowed.insert({"p", "training"});
        break;
      default:
        break;
    }
    for (auto it = l.begin(); it != l.end(); ++it)
      if (!allowed.count(it.key())) fail(label, w + ": unknown key \"" + it.key() + "\"");
    for (const auto& k : required)
      if (!l.contains(k)) fail(label, w + ": missing key \"" + k + "\"");
    get_bool("bias", s.bias);
    switch (s.type) {
      case LayerType::linear:
        s.in_features = get_int(l, "in_features", w, label);
        s.out_features = get_int(l, "out_features", w, label);
        break;
      case LayerType::conv2d:
      case LayerType::conv1d: {
        const bool one = s.type == LayerType::conv1d;
        s.in_channels = get_int(l, "in_channels", w, label);
        s.out_channels = get_int(l, "out_channels", w, label);
        if (l.contains("groups")) s.groups = get_int(l, "groups", w, label);
        if (s.groups <= 0 || s.in_channels % s.groups != 0 || s.out_channels % s.groups != 0)
          fail(label, w + ": \"groups\" (" + std::to_string(s.groups) + ") must divide in_channels (" +
                          std::to_string(s.in_channels) + ") and out_channels (" + std::to_string(s.out_channels) +
                          ")");
        // conv1d: integers (the width's; its height is 1, stride 1, padding 0)
        auto get_size = [&](const char* key, Index& h, Index& wd) {
          if (!one) return get_pair(l, key, w, label, h, wd);
          wd = get_int(l, key, w, label);
        };
        if (one) s.kernel_h = 1;
        get_size("kernel_size", s.kernel_h, s.kernel_w);
        if (l.contains("stride")) get_size("stride", s.stride_h, s.stride_w);
        if (l.contains("padding")) {
          if (l["padding"].is_string()) {
            const std::string p = l["padding"].get<std::string>();
            if (p == "same")
              s.padding_same = true;
            else if (p != "valid")
              fail(label, w + ": \"padding\" must be an integer" + (one ? "" : ", a pair") + ", \"same\" or \"valid\"");
          } else {
            get_size("padding", s.padding_h, s.padding_w);
          }
        }
        break;
      }
      case LayerType::leaky_relu:
        get_number("negative_slope", s.negative_slope);
        break;
      case LayerType::gelu:
        if (l.contains("approximate")) {
          const json& v = l["approximate"];
          if (!v.is_string() || (v.get<std::string>() != "none" && v.get<std::string>() != "tanh"))
            fail(label, w + ": \"approximate\" must be \"none\" or \"tanh\"");
          s.tanh_approximation = v.get<std::string>() == "tanh";
        }
        break;
      case LayerType::maxpool2d:
      case LayerType::avgpool2d:
        get_pair(l, "kernel_size", w, label, s.kernel_h, s.kernel_w);
        s.stride_h = s.stride_w = 0;  // PyTorch: stride defaults to kernel_size
        if (l.contains("stride") && !l["stride"].is_null()) get_pair(l, "stride", w, label, s.stride_h, s.stride_w);
        if (l.contains("padding")) get_pair(l, "padding", w, label, s.padding_h, s.padding_w);
        break;
      case LayerType::add:
        get_string("parameter", s.parameter);
        if (!s.parameter.empty() != l.contains("parameter_shape"))
          fail(label, w + ": \"parameter\" and \"parameter_shape\" go together");
        if (l.contains("parameter_shape")) get_shape("parameter_shape", s.parameter_shape);
        break;
      case LayerType::cat:
        if (l.contains("dim")) s.dim = get_int(l, "dim", w, label);
        break;
      case LayerType::layer_norm:
        get_shape("normalized_shape", s.normalized_shape);
        get_number("eps", s.eps);
        get_bool("elementwise_affine", s.affine);
        break;
      case LayerType::batch_norm:
        s.num_features = get_int(l, "num_features", w, label);
        get_number("eps", s.eps);
        get_bool("affine", s.affine);
        get_bool("training", s.training);
        break;
      case LayerType::group_norm:
        s.num_groups = get_int(l, "num_groups", w, label);
        s.num_channels = get_int(l, "num_channels", w, label);
        get_number("eps", s.eps);
        get_bool("affine", s.affine);
        break;
      case LayerType::embedding:
        s.num_embeddings = get_int(l, "num_embeddings", w, label);
        s.embedding_dim = get_int(l, "embedding_dim", w, label);
        if (l.contains("padding_idx") && !l["padding_idx"].is_null()) s.padding_idx = get_int(l, "padding_idx", w, label);
        break;
      case LayerType::global_avgpool:
        get_bool("keepdim", s.keepdim);
        break;
      case LayerType::elu:
        get_number("alpha", s.alpha);
        break;
      case LayerType::scalar_affine:
        get_number("scale", s.scale);
        get_number("shift", s.shift);
        break;
      case LayerType::reshape:
        get_shape("shape", s.shape);
        break;
      case LayerType::permute:
        get_dims("dims", s.dims);
        break;
      case LayerType::mean:
      case LayerType::sum:
        get_dims("dim", s.dims);
        get_bool("keepdim", s.keepdim);
        break;
      case LayerType::upsample:
        get_shape("scale_factor", s.scale_factor);
        if (l.contains("mode") && l["mode"] != "nearest")
          fail(label, w + ": \"mode\" must be \"nearest\" (the only upsampling natgrad has)");
        break;
      case LayerType::multihead_attention:
      case LayerType::attention:
        if (s.type == LayerType::multihead_attention) s.embed_dim = get_int(l, "embed_dim", w, label);
        s.num_heads = get_int(l, "num_heads", w, label);
        get_string("attn_mask", s.attn_mask);
        if (l.contains("attn_mask_dtype")) {
          const json& v = l["attn_mask_dtype"];
          if (!v.is_string() || (v.get<std::string>() != "float" && v.get<std::string>() != "bool"))
            fail(label, w + ": \"attn_mask_dtype\" must be \"float\" or \"bool\"");
          s.attn_mask_bool = v.get<std::string>() == "bool";
        }
        break;
      case LayerType::dropout:
        get_bool("training", s.training);
        if (l.contains("p") && !l["p"].is_number()) fail(label, w + ": \"p\" must be a number");
        break;
      default:
        break;
    }
    m.spec.layers.push_back(s);
  }
  try {
    Network<double> check(m.spec);  // is the graph valid?
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
  if (!m.spec.output.empty()) j["output"] = m.spec.output;
  if (!m.spec.parameter_order.empty()) j["parameters"] = m.spec.parameter_order;
  j["layers"] = nlohmann::ordered_json::array();
  for (const LayerSpec& s : m.spec.layers) {
    nlohmann::ordered_json l;
    l["type"] = to_string(s.type);
    if (!s.name.empty()) l["name"] = s.name;
    if (!s.id.empty()) l["id"] = s.id;
    if (!s.inputs.empty()) l["inputs"] = s.inputs;
    if (!s.param_names.empty()) l["parameter_names"] = s.param_names;
    if (!s.origin.empty()) l["origin"] = s.origin;
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
        if (s.padding_same)
          l["padding"] = "same";
        else
          l["padding"] = {s.padding_h, s.padding_w};
        l["bias"] = s.bias;
        if (s.groups != 1) l["groups"] = s.groups;
        break;
      case LayerType::conv1d:
        l["in_channels"] = s.in_channels;
        l["out_channels"] = s.out_channels;
        l["kernel_size"] = s.kernel_w;
        l["stride"] = s.stride_w;
        if (s.padding_same)
          l["padding"] = "same";
        else
          l["padding"] = s.padding_w;
        l["bias"] = s.bias;
        if (s.groups != 1) l["groups"] = s.groups;
        break;
      case LayerType::leaky_relu:
        l["negative_slope"] = s.negative_slope;
        break;
      case LayerType::gelu:
        if (s.tanh_approximation) l["approximate"] = "tanh";
        break;
      case LayerType::maxpool2d:
      case LayerType::avgpool2d:
        l["kernel_size"] = {s.kernel_h, s.kernel_w};
        if (s.stride_h > 0) l["stride"] = {s.stride_h, s.stride_w};
        if (s.padding_h > 0 || s.padding_w > 0) l["padding"] = {s.padding_h, s.padding_w};
        break;
      case LayerType::add:
        if (!s.parameter.empty()) {
          l["parameter"] = s.parameter;
          l["parameter_shape"] = s.parameter_shape;
        }
        break;
      case LayerType::cat:
        l["dim"] = s.dim;
        break;
      case LayerType::layer_norm:
        l["normalized_shape"] = s.normalized_shape;
        l["eps"] = s.eps;
        l["elementwise_affine"] = s.affine;
        break;
      case LayerType::batch_norm:
        l["num_features"] = s.num_features;
        l["eps"] = s.eps;
        l["affine"] = s.affine;
        if (s.training) l["training"] = true;
        break;
      case LayerType::group_norm:
        l["num_groups"] = s.num_groups;
        l["num_channels"] = s.num_channels;
        l["eps"] = s.eps;
        l["affine"] = s.affine;
        break;
      case LayerType::embedding:
        l["num_embeddings"] = s.num_embeddings;
        l["embedding_dim"] = s.embedding_dim;
        if (s.padding_idx >= 0) l["padding_idx"] = s.padding_idx;
        break;
      case LayerType::global_avgpool:
        l["keepdim"] = s.keepdim;
        break;
      case LayerType::elu:
        l["alpha"] = s.alpha;
        break;
      case LayerType::scalar_affine:
        l["scale"] = s.scale;
        l["shift"] = s.shift;
        break;
      case LayerType::reshape:
        l["shape"] = s.shape;
        break;
      case LayerType::permute:
        l["dims"] = s.dims;
        break;
      case LayerType::mean:
      case LayerType::sum:
        l["dim"] = s.dims;
        l["keepdim"] = s.keepdim;
        break;
      case LayerType::upsample:
        l["scale_factor"] = s.scale_factor;
        l["mode"] = "nearest";
        break;
      case LayerType::multihead_attention:
      case LayerType::attention:
        if (s.type == LayerType::multihead_attention) {
          l["embed_dim"] = s.embed_dim;
          l["bias"] = s.bias;
        }
        l["num_heads"] = s.num_heads;
        if (!s.attn_mask.empty()) {
          l["attn_mask"] = s.attn_mask;
          l["attn_mask_dtype"] = s.attn_mask_bool ? "bool" : "float";
        }
        break;
      case LayerType::dropout:
        if (s.training) l["training"] = true;
        break;
      default:
        break;
    }
    j["layers"].push_back(l);
  }
  return j.dump(1);
}

}  // namespace natgrad
