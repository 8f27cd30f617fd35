#include "train_checkpoint.h"

#include <natgrad/training/kfac_optimizer.h>

#include <natgrad/training/optimizer.h>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace natgrad {
namespace cli {

namespace {

std::string exact(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// How a setting is named in messages: its option, or what it counts.
std::string label(const std::string& key) {
  if (key == "params") return "the model's parameter count";
  if (key == "samples") return "the training data's sample count";
  if (key == "shuffle") return "shuffling (--no-shuffle)";
  std::string option = "--" + key;
  for (char& c : option)
    if (c == '_') c = '-';
  return option;
}

std::string hex(uLong crc) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08lx", static_cast<unsigned long>(crc));
  return buf;
}

uLong crc_of(uLong crc, const void* bytes, std::size_t size) {
  return size == 0 ? crc : crc32_z(crc, static_cast<const Bytef*>(bytes), static_cast<z_size_t>(size));
}

}  // namespace

template <typename Scalar>
std::vector<std::pair<std::string, std::string>> train_fingerprints(const ModelFile& model,
                                                                    const Dataset<Scalar>& data) {
  ModelFile canonical = model;
  for (LayerSpec& layer : canonical.spec.layers) layer.origin.clear();  // (a note on where it came from)
  // (without the format's version: the same model described by a later natgrad is the same model)
  nlohmann::ordered_json description = nlohmann::ordered_json::parse(model_spec_to_json(canonical));
  description.erase("format_version");
  const std::string text = description.dump();
  const uLong model_crc = crc_of(crc32_z(0, Z_NULL, 0), text.data(), text.size());
  uLong data_crc = crc32_z(0, Z_NULL, 0);
  data_crc = crc_of(data_crc, data.inputs.data(), sizeof(Scalar) * std::size_t(data.inputs.size()));
  data_crc = crc_of(data_crc, data.labels.data(), sizeof(int64_t) * data.labels.size());
  data_crc = crc_of(data_crc, data.targets.data(), sizeof(Scalar) * std::size_t(data.targets.size()));
  return {{"model_crc32", hex(model_crc)}, {"data_crc32", hex(data_crc)}};
}

template std::vector<std::pair<std::string, std::string>> train_fingerprints(const ModelFile&, const Dataset<float>&);
template std::vector<std::pair<std::string, std::string>> train_fingerprints(const ModelFile&, const Dataset<double>&);

std::vector<std::pair<std::string, std::string>> train_settings(const Args& a, Index params, Index samples) {
  std::vector<std::pair<std::string, std::string>> s = {{"optimizer", a.optimizer},
                                                        {"params", std::to_string(params)},
                                                        {"samples", std::to_string(samples)},
                                                        {"dtype", a.dtype},
                                                        {"batch", std::to_string(a.batch)},
                                                        {"seed", std::to_string(a.seed)},
                                                        {"shuffle", a.no_shuffle ? "false" : "true"},
                                                        {"autoencoder", a.autoencoder ? "true" : "false"}};
  // Text: the window, and the fraction held out (0 where --test-data gives the evaluation windows and every
  // window trains). (Recorded for text only, so that the checkpoints of other data read as they did.)
  if (a.context > 0) {
    s.push_back({"context", std::to_string(a.context)});
    s.push_back({"holdout", exact(a.test_data.empty() ? a.holdout : 0.0)});
  }
  if (a.optimizer == "adam") {
    s.push_back({"lr", exact(a.lr > 0 ? a.lr : AdamOptions().lr)});
  } else if (a.optimizer == "sgd") {
    s.push_back({"lr", exact(a.lr > 0 ? a.lr : SgdOptions().lr)});
    s.push_back({"momentum", exact(a.momentum)});
  } else if (a.optimizer == "kfac") {
    s.push_back({"lr", exact(a.lr > 0 ? a.lr : KfacStepOptions().lr)});
    s.push_back({"damping", exact(a.damping)});
    s.push_back({"damping_adapt", a.damping_adapt});
    s.push_back({"min_damping", exact(a.min_damping)});
    s.push_back({"inverse_every", std::to_string(a.inverse_every)});
    s.push_back({"factor_every", std::to_string(a.factor_every)});
    s.push_back({"curvature_batch", std::to_string(a.curvature_batch)});
    s.push_back({"fisher", a.fisher});
    if (a.fisher == "mc") s.push_back({"mc_samples", std::to_string(a.mc_samples)});
  } else {
    s.push_back({"lr", exact(a.lr > 0 ? a.lr : NaturalGradientStepOptions().lr)});
    s.push_back({"momentum", exact(a.momentum)});
    s.push_back({"line_search", a.line_search});
    s.push_back({"cg_backtrack", a.cg_backtrack});
    s.push_back({"damping", exact(a.damping)});
    s.push_back({"damping_adapt", a.damping_adapt});
    s.push_back({"curvature_batch", std::to_string(a.curvature_batch)});
    s.push_back({"fisher", a.fisher});
    if (a.fisher == "mc") s.push_back({"mc_samples", std::to_string(a.mc_samples)});
    s.push_back({"solver", a.solver});
    s.push_back({"cg_tol", exact(a.cg_tol)});
    s.push_back({"cg_max_iters", std::to_string(a.cg_max_iters)});
  }
  return s;
}

// (A setting a checkpoint lacks reads "(not recorded)"; a fingerprint it lacks: it was written before
// natgrad recorded them.)
void check_resume(const std::string& path, const std::map<std::string, std::string>& saved,
                  const std::vector<std::pair<std::string, std::string>>& now) {
  const std::string at = "--resume " + path + ": ";
  for (const auto& [key, value] : now) {
    const auto it = saved.find(key);
    if (it != saved.end() && it->second == value) continue;
    const bool model = key == "model_crc32";
    if (!model && key != "data_crc32") {
      const std::string old = it == saved.end() ? "(not recorded)" : it->second;
      throw std::invalid_argument(at + label(key) + " differs: the checkpoint's " + old + ", this run's " +
                                  value + " (a resumed run keeps every setting that changes the result; " +
                                  "--epochs, --max-time, --threads and the outputs may change); nothing " +
                                  "written");
    }
    if (it == saved.end())
      throw std::invalid_argument(at + "the checkpoint predates natgrad's check of the model and the " +
                                  "training data (it records no " + key + "), so this run cannot tell that " +
                                  "they are the checkpoint's; resume it with the natgrad that wrote it, or " +
                                  "train again without --resume; nothing written");
    const std::string what = model ? "the model" : "the training data";
    const std::string crc = model ? "CRC-32 of its description" : "CRC-32 of its inputs and targets";
    const std::string advice =
        model ? "another layer, activation, option or likelihood changes the result (or a natgrad that "
                "describes models otherwise wrote the checkpoint); give the --model the checkpoint was "
                "trained with"
              : "other samples change the result; give the --data the checkpoint was trained on";
    throw std::invalid_argument(at + what + " differs from the checkpoint's (" + crc + ": the checkpoint's " +
                                it->second + ", this run's " + value + "): " + advice +
                                ", or train again without --resume; nothing written");
  }
}

std::string log_before(const std::string& path, Index steps, const std::string& header) {
  std::ifstream in(path);
  if (!in) return header;
  std::string line, kept;
  if (!std::getline(in, line) || line + "\n" != header)
    throw std::invalid_argument("--log " + path +
                                ": not a natgrad train log (its first line is not the header kind,step,...), so a "
                                "resumed run cannot continue it; give another --log path; nothing written");
  kept = header;
  while (std::getline(in, line)) {
    // kind,step,...: the rows are in step order; the first past the checkpoint ends what is kept.
    const std::size_t a = line.find(','), b = a == std::string::npos ? a : line.find(',', a + 1);
    if (b == std::string::npos) break;
    long long step = -1;
    if (std::sscanf(line.substr(a + 1, b - a - 1).c_str(), "%lld", &step) != 1 || step > steps) break;
    kept += line + "\n";
  }
  return kept;
}

}  // namespace cli
}  // namespace natgrad
