// Training checkpoints (checkpoint.h): parameters, buffers and optimizer state as tensors, the progress and the
// settings as metadata, written so that every bit of the run's state comes back.
#include <natgrad/io/safetensors.h>
#include <natgrad/training/checkpoint.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "core/fail.h"

namespace natgrad {

namespace {

const char* kKind = "training checkpoint";
const char* kVersion = "1";
const std::string kPrefix = "optimizer/";

// 17 significant digits: strtod gives back the same double.
std::string exact(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

nlohmann::json number_or_null(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

class MetadataReader {
 public:
  MetadataReader(const std::string& path, const std::map<std::string, std::string>& m) : path_(path), m_(m) {}
  const std::string& text(const std::string& key) const {
    const auto it = m_.find(key);
    if (it == m_.end()) detail::fail(path_, "the checkpoint's metadata lacks \"" + key + "\" (a damaged checkpoint?)");
    return it->second;
  }
  Index integer(const std::string& key) const {
    const std::string& t = text(key);
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(t.c_str(), &end, 10);
    if (t.empty() || *end != '\0' || errno != 0 || v < 0) bad(key, t, "a non-negative integer");
    return static_cast<Index>(v);
  }
  double real(const std::string& key) const {
    const std::string& t = text(key);
    char* end = nullptr;
    const double v = std::strtod(t.c_str(), &end);
    if (t.empty() || *end != '\0' || !std::isfinite(v)) bad(key, t, "a finite number");
    return v;
  }
  [[noreturn]] void bad(const std::string& key, const std::string& value, const std::string& what) const {
    detail::fail(path_, "the checkpoint's metadata \"" + key + "\" is \"" + value + "\", not " + what);
  }

 private:
  const std::string& path_;
  const std::map<std::string, std::string>& m_;
};

std::vector<EpochSummary> epochs_from_json(const std::string& path, const std::string& text) {
  std::vector<EpochSummary> out;
  const auto real = [](const nlohmann::json& v) {
    return v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>();
  };
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    if (!j.is_array()) throw std::invalid_argument("not an array");
    for (const auto& e : j) {
      EpochSummary s;
      s.epoch = e.at("epoch").get<Index>();
      s.train_loss = real(e.at("train_loss"));
      s.test_loss = real(e.at("test_loss"));
      s.test_accuracy = real(e.at("test_accuracy"));
      s.time_s = real(e.at("time_s"));
      s.damping = real(e.at("damping"));
      s.cg_iterations = real(e.at("cg_iterations"));
      out.push_back(s);
    }
  } catch (const std::exception&) {
    detail::fail(path, "the checkpoint's metadata \"epochs\" is not a list of epoch summaries");
  }
  return out;
}

}  // namespace

const std::vector<std::string>& checkpoint_reserved_keys() {
  static const std::vector<std::string> keys = {"natgrad",        "checkpoint_version", "optimizer",
                                                "steps",          "epochs_completed",   "epoch_samples",
                                                "time_s",         "epoch_loss_sum",     "epochs",
                                                "epoch_cg_sum",   "epoch_steps",        "epoch_damping"};
  return keys;
}

template <typename Scalar>
void save_checkpoint(const std::string& path, const Network<Scalar>& model, const Vec<Scalar>& theta,
                     const Optimizer<Scalar>& optimizer, const TrainProgress& progress,
                     const std::map<std::string, std::string>& settings) {
  model.check_params(theta.size());
  const DType own = sizeof(Scalar) == 4 ? DType::F32 : DType::F64;
  std::vector<TensorView> views;
  for (const NamedParam& p : model.named_params())
    views.push_back({p.name, own, std::vector<int64_t>(p.shape.begin(), p.shape.end()), theta.data() + p.offset});
  std::vector<std::vector<Scalar>> buffers;  // (kept alive until the write)
  buffers.reserve(model.named_buffers().size());
  for (std::size_t k = 0; k < model.named_buffers().size(); ++k) {
    const NamedBuffer& b = model.named_buffers()[k];
    buffers.push_back(model.buffer(k));
    views.push_back({b.name, own, std::vector<int64_t>(b.shape.begin(), b.shape.end()), buffers.back().data()});
  }
  for (const TensorView& v : views)
    if (v.name.compare(0, kPrefix.size(), kPrefix) == 0)
      detail::fail(path, "the model's tensor \"" + v.name + "\" begins with \"" + kPrefix +
                             "\", which a checkpoint keeps for the optimizer's state");
  const OptimizerState state = optimizer.state();
  for (const auto& [name, v] : state.vectors) views.push_back({kPrefix + name, DType::F64, {int64_t(v.size())}, v.data()});
  for (const auto& [name, v] : state.scalars) views.push_back({kPrefix + name, DType::F64, {}, &v});

  std::map<std::string, std::string> meta = settings;
  for (const std::string& key : checkpoint_reserved_keys())
    if (meta.count(key)) detail::fail(path, "the setting \"" + key + "\" takes a name the checkpoint itself uses");
  meta["natgrad"] = kKind;
  meta["checkpoint_version"] = kVersion;
  meta["optimizer"] = optimizer.name();
  meta["steps"] = std::to_string(progress.steps);
  meta["epochs_completed"] = std::to_string(progress.epochs);
  meta["epoch_samples"] = std::to_string(progress.epoch_samples);
  meta["time_s"] = exact(progress.time_s);
  meta["epoch_loss_sum"] = exact(progress.epoch_loss_sum);
  meta["epoch_cg_sum"] = exact(progress.epoch_cg_sum);
  meta["epoch_steps"] = std::to_string(progress.epoch_steps);
  meta["epoch_damping"] = exact(progress.epoch_damping);
  nlohmann::json epochs = nlohmann::json::array();
  for (const EpochSummary& e : progress.per_epoch)
    epochs.push_back({{"epoch", e.epoch},
                      {"train_loss", number_or_null(e.train_loss)},
                      {"test_loss", number_or_null(e.test_loss)},
                      {"test_accuracy", number_or_null(e.test_accuracy)},
                      {"time_s", number_or_null(e.time_s)},
                      {"damping", number_or_null(e.damping)},
                      {"cg_iterations", number_or_null(e.cg_iterations)}});
  meta["epochs"] = epochs.dump();
  write_safetensors(path, views, meta);
}

std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::read(path);
  const auto& m = f.metadata();
  const auto kind = m.find("natgrad");
  if (kind == m.end() || kind->second != kKind)
    detail::fail(path, "not a training checkpoint (its metadata lacks natgrad: \"" + std::string(kKind) +
                           "\"; --checkpoint writes one, --save only the parameters)");
  const auto version = m.find("checkpoint_version");
  if (version == m.end() || version->second != kVersion)
    detail::fail(path, "checkpoint version \"" + (version == m.end() ? std::string("none") : version->second) +
                           "\" is not one this natgrad reads (" + kVersion + ")");
  return m;
}

template <typename Scalar>
Checkpoint<Scalar> load_checkpoint(const std::string& path, const Network<Scalar>& model) {
  const std::map<std::string, std::string> meta = read_checkpoint_metadata(path);
  const SafetensorsFile f = SafetensorsFile::read(path);
  const DType own = sizeof(Scalar) == 4 ? DType::F32 : DType::F64;
  Checkpoint<Scalar> c;
  std::vector<std::string> known;
  // A tensor of the model: present, of its shape and of the run's dtype (a checkpoint is exact, never converted).
  auto tensor = [&](const std::string& name, const Shape& shape, const char* what) {
    if (!f.contains(name))
      detail::fail(path, "the checkpoint lacks the " + std::string(what) + " \"" + name +
                             "\" (a checkpoint of another model?)");
    const TensorInfo& t = f.info(name);
    if (Shape(t.shape.begin(), t.shape.end()) != shape)
      detail::fail(path, "the checkpoint's " + std::string(what) + " \"" + name + "\" has shape " + shape_text(t.shape) +
                             " but the model's is " + shape_to_string(shape) + " (a checkpoint of another model?)");
    if (t.dtype != own)
      detail::fail(path, "the checkpoint's " + std::string(what) + " \"" + name + "\" is " + to_string(t.dtype) +
                             " but this run computes in " + (own == DType::F32 ? "float32" : "float64") +
                             " (resume with the --dtype it was written with)");
    known.push_back(name);
    return f.get<Scalar>(name);
  };
  c.theta.resize(model.num_params());
  for (const NamedParam& p : model.named_params()) {
    const std::vector<Scalar> v = tensor(p.name, p.shape, "parameter");
    for (std::size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i]))
        detail::fail(path, "the checkpoint's parameter \"" + p.name + "\" has a non-finite value at flat index " +
                               std::to_string(i));
    std::copy(v.begin(), v.end(), c.theta.data() + p.offset);
  }
  for (const NamedBuffer& b : model.named_buffers()) c.buffers.push_back(tensor(b.name, b.shape, "buffer"));
  for (const std::string& name : f.names()) {
    if (std::find(known.begin(), known.end(), name) != known.end()) continue;
    if (name.compare(0, kPrefix.size(), kPrefix) != 0)
      detail::fail(path, "the checkpoint holds the tensor \"" + name + "\", which the model does not have (a checkpoint "
                         "of another model?)");
    const TensorInfo& t = f.info(name);
    if (t.dtype != DType::F64 || t.shape.size() > 1)
      detail::fail(path, "the optimizer's tensor \"" + name + "\" must be F64 of shape [] or [n], not " +
                             to_string(t.dtype) + " " + shape_text(t.shape));
    const std::vector<double> v = f.get<double>(name);
    if (t.shape.empty())
      c.state.scalars.push_back({name.substr(kPrefix.size()), v[0]});
    else
      c.state.vectors.push_back({name.substr(kPrefix.size()), Eigen::Map<const Vec<double>>(v.data(), Index(v.size()))});
  }
  const MetadataReader m(path, meta);
  c.optimizer = m.text("optimizer");
  c.progress.steps = m.integer("steps");
  c.progress.epochs = m.integer("epochs_completed");
  c.progress.epoch_samples = m.integer("epoch_samples");
  c.progress.time_s = m.real("time_s");
  c.progress.epoch_loss_sum = m.real("epoch_loss_sum");
  c.progress.epoch_cg_sum = m.real("epoch_cg_sum");
  c.progress.epoch_steps = m.integer("epoch_steps");
  c.progress.epoch_damping = m.real("epoch_damping");
  c.progress.per_epoch = epochs_from_json(path, m.text("epochs"));
  if (Index(c.progress.per_epoch.size()) != c.progress.epochs)
    detail::fail(path, "the checkpoint's metadata lists " + std::to_string(c.progress.per_epoch.size()) +
                           " epoch summaries for " + std::to_string(c.progress.epochs) + " epochs completed");
  const std::vector<std::string>& reserved = checkpoint_reserved_keys();
  for (const auto& [key, value] : meta)
    if (std::find(reserved.begin(), reserved.end(), key) == reserved.end()) c.settings[key] = value;
  return c;
}

template void save_checkpoint<float>(const std::string&, const Network<float>&, const Vec<float>&,
                                     const Optimizer<float>&, const TrainProgress&,
                                     const std::map<std::string, std::string>&);
template void save_checkpoint<double>(const std::string&, const Network<double>&, const Vec<double>&,
                                      const Optimizer<double>&, const TrainProgress&,
                                      const std::map<std::string, std::string>&);
template Checkpoint<float> load_checkpoint<float>(const std::string&, const Network<float>&);
template Checkpoint<double> load_checkpoint<double>(const std::string&, const Network<double>&);

}  // namespace natgrad
